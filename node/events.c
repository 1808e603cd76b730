/* events.c - being written */
