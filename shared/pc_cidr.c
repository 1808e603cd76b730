/* pc_cidr.c - being written */
