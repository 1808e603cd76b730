/* http_classify.c - being written */
