/*
 * frame_list.h - reads video frames for the C examples and tests: binary PPM
 * files (P6, 8 bits) listed in a text file, one "TIME_SECONDS FILE" line per
 * frame in order, an optional "duration SECONDS" line, '#' comments; file
 * names are relative to the list's folder. Header-only, C99.
 */
#ifndef HTS_FRAME_LIST_H
#define HTS_FRAME_LIST_H

#include "htsparse.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct frame_list {
    struct hts_image * frames;
    unsigned char ** pixels;
    int n;
    double duration_s;
};

/* Reads one binary PPM (P6, maxval 255) into *rgb; 0 on success. */
static int read_ppm(const char * path, unsigned char ** rgb, uint32_t * width, uint32_t * height) {
    FILE * f = fopen(path, "rb");
    unsigned int values[3];
    int i, c;
    size_t size;
    if (!f) return -1;
    if (fgetc(f) != 'P' || fgetc(f) != '6') goto fail;
    for (i = 0; i < 3; ++i) { /* width, height, maxval; '#' comments between them */
        do {
            c = fgetc(f);
            if (c == '#') {
                while (c != '\n' && c != EOF) c = fgetc(f);
            }
        } while (c == ' ' || c == '\t' || c == '\r' || c == '\n');
        if (c < '0' || c > '9') goto fail;
        ungetc(c, f);
        if (fscanf(f, "%u", &values[i]) != 1) goto fail;
    }
    fgetc(f); /* the single whitespace before the pixels */
    if (values[0] == 0 || values[1] == 0 || values[2] != 255) goto fail;
    size = (size_t)values[0] * values[1] * 3;
    *rgb = (unsigned char *)malloc(size);
    if (!*rgb || fread(*rgb, 1, size, f) != size) {
        free(*rgb);
        goto fail;
    }
    *width = values[0];
    *height = values[1];
    fclose(f);
    return 0;
fail:
    fclose(f);
    return -1;
}

static void free_frames(struct frame_list * list) {
    int i;
    for (i = 0; i < list->n; ++i) free(list->pixels[i]);
    free(list->pixels);
    free(list->frames);
}

/* Reads the frame list; file names are relative to the list's folder. */
static int read_frame_list(const char * list_path, struct frame_list * out) {
    char line[4096], path[8192], dir[4096];
    const char * slash = strrchr(list_path, '/');
    FILE * f = fopen(list_path, "r");
    int capacity = 0;
    memset(out, 0, sizeof(*out));
    if (!f) {
        fprintf(stderr, "error: cannot open the frame list '%s'\n", list_path);
        return -1;
    }
    snprintf(dir, sizeof(dir), "%.*s", slash ? (int)(slash - list_path) : 1, slash ? list_path : ".");
    while (fgets(line, sizeof(line), f)) {
        double t;
        char name[2048];
        if (line[0] == '#' || line[0] == '\n') continue;
        if (sscanf(line, "duration %lf", &out->duration_s) == 1) continue;
        if (sscanf(line, "%lf %2047s", &t, name) != 2) {
            fprintf(stderr, "error: bad line in '%s': %s", list_path, line);
            goto fail;
        }
        if (out->n == capacity) {
            capacity = capacity ? 2 * capacity : 16;
            out->frames = (struct hts_image *)realloc(out->frames, capacity * sizeof(struct hts_image));
            out->pixels = (unsigned char **)realloc(out->pixels, capacity * sizeof(unsigned char *));
            if (!out->frames || !out->pixels) goto fail;
        }
        snprintf(path, sizeof(path), "%s/%s", dir, name);
        if (read_ppm(path, &out->pixels[out->n], &out->frames[out->n].width, &out->frames[out->n].height) != 0) {
            fprintf(stderr, "error: '%s' is not a binary PPM (P6, 8 bits)\n", path);
            goto fail;
        }
        out->frames[out->n].rgb = out->pixels[out->n];
        out->frames[out->n].time_s = t;
        out->n++;
    }
    fclose(f);
    if (out->n == 0) fprintf(stderr, "error: no frames in '%s'\n", list_path);
    return out->n > 0 ? 0 : -1;
fail:
    fclose(f);
    free_frames(out);
    return -1;
}

#endif /* HTS_FRAME_LIST_H */
