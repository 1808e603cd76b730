/* test_http.c - being written */
#include "cu_main.h"
int unit_register(void)
{
    return 0;
}
