/* Test helper: a fresh temporary directory per test (under $TMPDIR, else
 * /tmp), removed with everything in it afterwards, and paths inside it. */
#ifndef CAROUSEL_TEST_TMPDIR_H
#define CAROUSEL_TEST_TMPDIR_H

#include <criterion/criterion.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char g_dir[256];

static void rm_rf(const char *path)
{
    struct stat st;
    if (lstat(path, &st) != 0) return;
    if (S_ISDIR(st.st_mode)) {
        chmod(path, 0700); /* a test may have made it read-only */
        DIR *d = opendir(path);
        if (d) {
            struct dirent *de;
            while ((de = readdir(d))) {
                if (strcmp(de->d_name, ".") == 0 || strcmp(de->d_name, "..") == 0) continue;
                char sub[512];
                snprintf(sub, sizeof sub, "%s/%s", path, de->d_name);
                rm_rf(sub);
            }
            closedir(d);
        }
        rmdir(path);
    } else {
        unlink(path);
    }
}

static const char *g_dir_tag;

/* Name the directory <TMPDIR>/carousel-<tag>-XXXXXX (a mkdtemp template); it is
 * created on the first tpath(), so a test that aborts on purpose (and never
 * reaches teardown) and never asked for a path leaves nothing behind. */
static void tmpdir_make(const char *tag)
{
    g_dir_tag = tag;
    g_dir[0] = '\0';
}

static void tmpdir_remove(void)
{
    if (g_dir[0]) rm_rf(g_dir);
}

/* The directory itself, created on first use. */
static const char *tmpdir_path(void)
{
    if (!g_dir[0]) {
        const char *base = getenv("TMPDIR");
        snprintf(g_dir, sizeof g_dir, "%s/carousel-%s-XXXXXX", base && *base ? base : "/tmp", g_dir_tag);
        cr_assert(mkdtemp(g_dir) != NULL, "mkdtemp failed");
    }
    return g_dir;
}

/* g_dir/name in one of four rotating static buffers. */
static const char *tpath(const char *name)
{
    tmpdir_path();
    static char buf[4][512];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s/%s", g_dir, name);
    return buf[k];
}

#endif
