/* proxy.c - being written */
