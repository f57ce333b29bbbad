/* Test helper: EXPECT_ERROR(stmt, text) runs stmt with an error handler that
 * records the message and longjmps back, then asserts that stmt did report an
 * error and that the message contains text. */
#ifndef CAROUSEL_TEST_EXPECT_ERROR_H
#define CAROUSEL_TEST_EXPECT_ERROR_H

#include <criterion/criterion.h>
#include <setjmp.h>
#include <stdio.h>
#include <string.h>

#include "carousel/tensor.h"

static jmp_buf err_jmp;
static char err_msg[1024];
static void catch_error(const char *m)
{
    snprintf(err_msg, sizeof err_msg, "%s", m);
    longjmp(err_jmp, 1);
}

#define EXPECT_ERROR(stmt, text)                                                                             \
    do {                                                                                                     \
        cr_error_handler old_ = cr_set_error_handler(catch_error);                                           \
        err_msg[0] = '\0';                                                                                   \
        if (setjmp(err_jmp) == 0) {                                                                          \
            stmt;                                                                                            \
            cr_set_error_handler(old_);                                                                      \
            cr_assert_fail("no error from: %s", #stmt);                                                      \
        }                                                                                                    \
        cr_set_error_handler(old_);                                                                          \
        cr_assert(strstr(err_msg, text) != NULL, "message \"%s\" lacks \"%s\"", err_msg, text);              \
    } while (0)

#endif
