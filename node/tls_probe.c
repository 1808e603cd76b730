/* tls_probe.c - being written */
