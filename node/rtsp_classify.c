/* rtsp_classify.c - being written */
