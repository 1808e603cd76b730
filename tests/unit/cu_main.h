/* cu_main.h - the one main() of every CUnit test binary. A test file defines
 * unit_register() to add its suites; `test_x [suite]` runs all suites or the
 * one named. Exit status is non-zero when any assertion failed. */
#ifndef PORTCULLIS_CU_MAIN_H
#define PORTCULLIS_CU_MAIN_H

#include <CUnit/CUnit.h>

/* Adds the file's suites to the registry; returns 0 or -1. */
int unit_register(void);

/* Adds a suite with its tests; a NULL-terminated {name, fn} array. */
typedef struct unit_case {
    const char *name;
    CU_TestFunc fn;
} unit_case;
int unit_add_suite(const char *name, const unit_case *cases);

#endif
