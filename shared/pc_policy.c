/* pc_policy.c - being written */
