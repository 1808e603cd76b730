/* mms_classify.c - being written */
