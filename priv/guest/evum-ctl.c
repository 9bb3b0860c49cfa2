/*
 * evum's command loop inside the guest, on its own serial line, which it
 * keeps in raw mode so that bytes pass unchanged. The framing is described
 * in native/evum_core/src/vm/control.rs: it reads
 *
 *   RUN <id> <line count>\n<that many lines of command>
 *   RUNB <id> <line count>\n<that many lines of the command in base64>
 *   SYNC <id> 0\n
 *
 * runs each command in a fresh `sh -c` with its output in a memory file, and
 * answers "\001EVUM RESULT <id> <exit status> <length>\n" and exactly that
 * many bytes of output. A SYNC is answered the same way, status 0 and no
 * output, once sync(2) has returned.
 *
 * A program and not a shell script because every guest process is a host
 * process under UML: a script's loop forked a subshell for wc and ran cat
 * for every command, three processes where one will do, and cost an exec
 * of the shell at boot.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#include "evum-guest.h"

static int write_all(int fd, const char *bytes, size_t length)
{
	while (length > 0) {
		ssize_t written = write(fd, bytes, length);

		if (written < 0 && errno == EINTR)
			continue;
		if (written <= 0)
			return -1;
		bytes += written;
		length -= (size_t)written;
	}
	return 0;
}

/* Makes in, out and err the standard descriptors, and closes them where
 * they were (one closed twice is EBADF, and harmless). */
static void redirect(int in, int out, int err)
{
	int fds[3] = { in, out, err };

	for (int i = 0; i < 3; i++)
		dup2(fds[i], i);
	for (int i = 0; i < 3; i++)
		if (fds[i] > 2)
			close(fds[i]);
}

/* The line on stdin and stdout, raw; stderr to /dev/null. */
static int open_line(void)
{
	struct termios mode;
	int line = open(CONTROL_LINE, O_RDWR | O_NOCTTY);
	int quiet = open("/dev/null", O_WRONLY);

	if (line < 0 || quiet < 0) {
		complain("open", CONTROL_LINE);
		return -1;
	}
	if (tcgetattr(line, &mode) == 0) {
		cfmakeraw(&mode);
		tcsetattr(line, TCSANOW, &mode);
	}
	redirect(line, line, quiet);
	return 0;
}

/* Runs the command as the shell's `sh -c` would, with its output in out;
 * its exit status as the shell's $? gives it.
 *
 * The output is a memory file of its own (memfd), in no file system the
 * command can see: a command that fills the guest's / or /tmp still gets
 * its error message back, a chrooted command needs nothing of its root,
 * and a program it leaves running writes on into its own file, never into
 * a later command's. */
static int run(const char *command, const char *root, int out)
{
	int status;
	pid_t pid = fork();

	if (pid < 0)
		return 127;
	if (pid == 0) {
		int input = open("/dev/null", O_RDONLY);

		if (out < 0 || input < 0)
			_exit(127);
		redirect(input, out, out);
		/* The root's own /bin/sh, by path. */
		if (root && (chroot(root) != 0 || chdir("/") != 0))
			_exit(127);
		execl(SHELL, "sh", "-c", command, (char *)NULL);
		_exit(127);
	}
	while (waitpid(pid, &status, 0) < 0)
		if (errno != EINTR)
			return 127;
	if (WIFEXITED(status))
		return WEXITSTATUS(status);
	return 128 + WTERMSIG(status);
}

/* Sends the result header and exactly the length it names: a program the
 * command left behind may still be writing the file, and the framing must
 * hold all the same. */
static int answer(unsigned long long id, int status, int out)
{
	char buffer[16384];
	struct stat info;
	off_t left, at = 0;
	int length;

	if (out < 0 || fstat(out, &info) != 0)
		info.st_size = 0;
	left = info.st_size;
	length = snprintf(buffer, sizeof(buffer), "\001EVUM RESULT %llu %d %lld\n", id, status,
			  (long long)left);
	if (write_all(1, buffer, (size_t)length) != 0)
		return -1;
	while (left > 0) {
		size_t want = left < (off_t)sizeof(buffer) ? (size_t)left : sizeof(buffer);
		ssize_t got = out >= 0 ? pread(out, buffer, want, at) : 0;

		if (got < 0 && errno == EINTR)
			continue;
		/* Shorter than it was: zeros keep the promised length. */
		if (got <= 0) {
			memset(buffer, 0, want);
			got = (ssize_t)want;
		}
		if (write_all(1, buffer, (size_t)got) != 0)
			return -1;
		left -= got;
		at += got;
	}
	return 0;
}

int control_loop(const char *root)
{
	FILE *in;
	char *line = NULL, *command = NULL;
	size_t line_size = 0, command_length;

	if (open_line() != 0)
		return 1;
	in = fdopen(0, "r");
	if (!in)
		return 1;
	if (write_all(1, "\001EVUM READY\n", 12) != 0)
		return 1;
	while (getline(&line, &line_size, in) >= 0) {
		char kind[8];
		unsigned long long id;
		long left;
		int base64, status, out;

		/* Anything but a request is noise. */
		if (sscanf(line, "%7s %llu %ld", kind, &id, &left) != 3 || left < 0)
			continue;
		/* A stop's sync: the system call here, not a guest process
		 * of its own for a `sync` command. */
		if (strcmp(kind, "SYNC") == 0) {
			sync();
			if (answer(id, 0, -1) != 0)
				return 1;
			continue;
		}
		base64 = strcmp(kind, "RUNB") == 0;
		if (!base64 && strcmp(kind, "RUN") != 0)
			continue;
		free(command);
		command = strdup("");
		command_length = 0;
		for (; left > 0 && command && getline(&line, &line_size, in) >= 0; left--) {
			size_t length = strlen(line);
			char *longer;

			/* Base64 lines join without their newlines. */
			if (base64 && length > 0 && line[length - 1] == '\n')
				length--;
			longer = realloc(command, command_length + length + 1);
			if (!longer) {
				free(command);
				command = NULL;
				break;
			}
			command = longer;
			memcpy(command + command_length, line, length);
			command_length += length;
			command[command_length] = '\0';
		}
		/* No command to run, or no memory for its output: status 127
		 * and no output, as the shell for a command it cannot run. */
		out = memfd_create("evum-output", MFD_CLOEXEC);
		if (out >= 0 && command && (!base64 || base64_decode(command)))
			status = run(command, root, out);
		else
			status = 127;
		if (answer(id, status, out) != 0)
			return 1;
		if (out >= 0)
			close(out);
	}
	return 0;
}
