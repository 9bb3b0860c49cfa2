/*
 * PID 1 of evum's busybox image.
 *
 * Under UML every guest process is a host process and every fork and exec a
 * few milliseconds of host CPU, so the set-up a shell script would do with
 * mount, mkdir, ifconfig, ip, stty, setsid and cttyhack (one process each) is
 * done here with system calls, and init forks just twice: once for evum's
 * command loop (evum-ctl.c, in this same program), once for the console.
 *
 * The kernel passes evum's settings from its command line in the
 * environment:
 *   EVUM_HOSTNAME  the guest's hostname (default evm)
 *   EVUM_INIT      base64 of the command the console runs instead of a login
 *                  shell; its exit halts the VM, as a process ends when its
 *                  main program does
 *   EVUM_ROOT      the guest's root is elsewhere ("hostfs" or "ubda"): after
 *                  the common set-up, init becomes /sbin/evum-rootfs, which
 *                  mounts it and runs the console and the command loop
 *                  chrooted into it
 *
 * Run as /sbin/evum-ctl (a link to /init), the program is the command loop
 * alone, each command chrooted into EVUM_CHROOT if that is set: what
 * evum-rootfs starts.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <net/if.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "evum-guest.h"

#define ROOTFS_INIT "/sbin/evum-rootfs"
/* Busybox itself is on a read-only disk (evum_core's image::busybox). */
#define BUSYBOX_DISK "/dev/ubdp"
#define BUSYBOX_DIR "/lib/busybox"
#define BUSYBOX_READ_AHEAD "/sys/block/ubdp/queue/read_ahead_kb"

/* Messages go to the console, where evum reports them with a failed boot. */
void complain(const char *what, const char *detail)
{
	fprintf(stderr, "evum-init: %s%s%s: %s\n", what, detail ? " " : "", detail ? detail : "",
		strerror(errno));
}

static void power_off(void)
{
	sync();
	reboot(RB_POWER_OFF);
	/* Not reached: the kernel powers off. Should it return, init must not. */
	for (;;)
		pause();
}

/*
 * The page cache reads ahead 128 KB by default, which brings nearly all of
 * busybox into the guest's memory; 64 KB reads what the shell runs for about
 * a millisecond more at boot, and 1.5 MB less of each guest's memory.
 */
static void mount_busybox(void)
{
	int fd = open(BUSYBOX_READ_AHEAD, O_WRONLY | O_CLOEXEC);

	if (fd < 0 || write(fd, "64\n", 3) != 3)
		complain("set", BUSYBOX_READ_AHEAD);
	if (fd >= 0)
		close(fd);
	if (mount(BUSYBOX_DISK, BUSYBOX_DIR, "ext2", MS_RDONLY, NULL) != 0)
		complain("mount", BUSYBOX_DIR);
}

static void mount_filesystems(void)
{
	static const struct {
		const char *type, *target;
	} early[] = { { "proc", "/proc" }, { "sysfs", "/sys" }, { "devtmpfs", "/dev" } };

	for (size_t i = 0; i < sizeof(early) / sizeof(early[0]); i++)
		if (mount(early[i].type, early[i].target, early[i].type, 0, NULL) != 0)
			complain("mount", early[i].target);
	/* devtmpfs has neither; the console shell's job control wants ptys. */
	mkdir("/dev/pts", 0755);
	/* Writable by every guest user, as on any Linux; chmod, as the umask
	 * would clear the mode's group and other bits. */
	if (mkdir("/dev/shm", 0) != 0 || chmod("/dev/shm", 01777) != 0)
		complain("mkdir", "/dev/shm");
	if (mount("devpts", "/dev/pts", "devpts", 0, NULL) != 0)
		complain("mount", "/dev/pts");
	mount_busybox();
}

static void set_hostname(void)
{
	const char *name = getenv("EVUM_HOSTNAME");

	if (!name || !*name)
		name = "evm";
	if (sethostname(name, strlen(name)) != 0)
		complain("sethostname", name);
}

static int interface_request(int sock, unsigned long request, struct ifreq *ifr)
{
	if (ioctl(sock, request, ifr) == 0)
		return 0;
	complain("interface", ifr->ifr_name);
	return -1;
}

/*
 * Loopback up at 127.0.0.1, and the vector driver's vecN interfaces (how
 * guests reach evum's switch) renamed ethN, the names guests, evum:ifconfig/2
 * and the original README know them by, and brought up.
 */
static void set_up_network(void)
{
	int sock = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	struct ifreq ifr;
	struct sockaddr_in *addr = (struct sockaddr_in *)&ifr.ifr_addr;
	DIR *interfaces;
	struct dirent *entry;

	if (sock < 0) {
		complain("socket", NULL);
		return;
	}
	memset(&ifr, 0, sizeof(ifr));
	strcpy(ifr.ifr_name, "lo");
	addr->sin_family = AF_INET;
	addr->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (interface_request(sock, SIOCSIFADDR, &ifr) == 0 &&
	    interface_request(sock, SIOCGIFFLAGS, &ifr) == 0) {
		ifr.ifr_flags |= IFF_UP | IFF_RUNNING;
		interface_request(sock, SIOCSIFFLAGS, &ifr);
	}

	interfaces = opendir("/sys/class/net");
	while (interfaces && (entry = readdir(interfaces))) {
		if (strncmp(entry->d_name, "vec", 3) != 0 || strlen(entry->d_name) >= IFNAMSIZ)
			continue;
		memset(&ifr, 0, sizeof(ifr));
		strcpy(ifr.ifr_name, entry->d_name);
		snprintf(ifr.ifr_newname, IFNAMSIZ, "eth%s", entry->d_name + 3);
		if (interface_request(sock, SIOCSIFNAME, &ifr) != 0)
			continue;
		/* Up, without an address: its port is on the switch from the
		 * boot on, as a plugged-in cable is (the vector driver connects
		 * when the interface comes up). */
		strcpy(ifr.ifr_name, ifr.ifr_newname);
		if (interface_request(sock, SIOCGIFFLAGS, &ifr) == 0) {
			ifr.ifr_flags |= IFF_UP;
			interface_request(sock, SIOCSIFFLAGS, &ifr);
		}
	}
	if (interfaces)
		closedir(interfaces);
	close(sock);
}

char *base64_decode(char *text)
{
	static const char alphabet[] =
		"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
	unsigned int bits = 0, count = 0;
	char *out = text;

	for (const char *in = text; *in && *in != '='; in++) {
		const char *digit = strchr(alphabet, *in);

		if (!digit)
			return NULL;
		bits = (bits << 6) | (unsigned int)(digit - alphabet);
		count += 6;
		if (count >= 8) {
			count -= 8;
			*out++ = (char)((bits >> count) & 0xff);
		}
	}
	*out = '\0';
	return text;
}

/* The console: a session of its own with the console's tty as its
 * controlling terminal (/dev/console itself cannot be one), as cttyhack does. */
static pid_t start_console(const char *main_command)
{
	pid_t pid = fork();
	char active[32] = "";
	char tty[48];
	int fd;
	FILE *f;

	if (pid != 0)
		return pid;
	setsid();
	f = fopen("/sys/class/tty/console/active", "re");
	if (f && fscanf(f, "%31s", active) == 1) {
		snprintf(tty, sizeof(tty), "/dev/%s", active);
		fd = open(tty, O_RDWR);
		if (fd >= 0) {
			dup2(fd, 0);
			dup2(fd, 1);
			dup2(fd, 2);
			if (fd > 2)
				close(fd);
			ioctl(0, TIOCSCTTY, 0);
		}
	}
	if (f)
		fclose(f);
	if (chdir("/root") != 0)
		complain("chdir", "/root");
	if (main_command)
		execl(SHELL, "sh", "-c", main_command, (char *)NULL);
	else
		execl(SHELL, "sh", "-l", (char *)NULL);
	complain("exec", SHELL);
	_exit(127);
}

/* evum's command loop, in a process of its own. */
static void start_control_loop(void)
{
	if (fork() == 0)
		_exit(control_loop(NULL));
}

int main(int argc, char **argv)
{
	const char *encoded = getenv("EVUM_INIT");
	char *main_command = NULL;
	const char *name = argc > 0 ? strrchr(argv[0], '/') : NULL;
	pid_t console;
	int status;

	if (name && strcmp(name, "/evum-ctl") == 0)
		return control_loop(getenv("EVUM_CHROOT"));
	mount_filesystems();
	set_hostname();
	set_up_network();
	setenv("HOME", "/root", 1);
	setenv("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", 1);

	if (getenv("EVUM_ROOT")) {
		execl(SHELL, "sh", ROOTFS_INIT, (char *)NULL);
		complain("exec", ROOTFS_INIT);
		power_off();
	}
	if (encoded && *encoded) {
		main_command = base64_decode(strdup(encoded));
		if (!main_command)
			fprintf(stderr, "evum-init: EVUM_INIT is not base64\n");
	}

	/* The command loop first: evm:create/1 returns when it is up. */
	start_control_loop();
	console = start_console(main_command);
	/* PID 1 reaps every orphan; the VM ends when its console does. */
	for (;;) {
		pid_t pid = wait(&status);

		if (pid == console || (pid < 0 && errno == ECHILD))
			break;
	}
	power_off();
}
