/* What evum-init.c and evum-ctl.c, linked into one program, share. */
#ifndef EVUM_GUEST_H
#define EVUM_GUEST_H

#define SHELL "/bin/sh"
#define CONTROL_LINE "/dev/ttyS0"

/* Reports a failed call on stderr (the console, for init). */
void complain(const char *what, const char *detail);

/* Decodes standard base64 in place; returns NULL for malformed input. */
char *base64_decode(char *text);

/* evum's command loop on CONTROL_LINE, each command chrooted into root if
 * that is not NULL. Returns when the line closes. */
int control_loop(const char *root);

#endif
