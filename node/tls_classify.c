/* tls_classify.c - being written */
