/* tls_verify.c - being written */
