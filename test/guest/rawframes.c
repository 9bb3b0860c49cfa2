/*
 * rawframes: sends Ethernet frames of any source a guest's root may forge,
 * through a raw (AF_PACKET) socket, as fast as the interface takes them.
 *
 * Usage: rawframes IFACE DST SRC COUNT
 *   DST, SRC: a MAC (02:ee:00:00:00:01) or "random" (a new locally
 *   administered unicast MAC for every frame).
 * Frames are 60 bytes of ethertype 0x88b5 (local experimental). Prints
 * "rawframes: sent=N errors=E" and exits 0 when every frame went out.
 *
 * Build: gcc -static -O2 -o rawframes rawframes.c
 */
#include <arpa/inet.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static int parse_mac(const char *text, unsigned char mac[6])
{
	unsigned int b[6];
	if (sscanf(text, "%x:%x:%x:%x:%x:%x", &b[0], &b[1], &b[2], &b[3], &b[4], &b[5]) != 6)
		return -1;
	for (int i = 0; i < 6; i++)
		mac[i] = (unsigned char)b[i];
	return 0;
}

/* A locally administered unicast MAC, different for each n. */
static void random_mac(unsigned char mac[6], unsigned long n)
{
	mac[0] = 0x02;
	mac[1] = 0x66;
	mac[2] = (unsigned char)(n >> 24);
	mac[3] = (unsigned char)(n >> 16);
	mac[4] = (unsigned char)(n >> 8);
	mac[5] = (unsigned char)n;
}

int main(int argc, char **argv)
{
	if (argc != 5) {
		fprintf(stderr, "usage: rawframes IFACE DST|random SRC|random COUNT\n");
		return 2;
	}
	int random_dst = strcmp(argv[2], "random") == 0;
	int random_src = strcmp(argv[3], "random") == 0;
	unsigned char frame[60] = {0};
	if ((!random_dst && parse_mac(argv[2], frame) != 0) || (!random_src && parse_mac(argv[3], frame + 6) != 0)) {
		fprintf(stderr, "rawframes: bad MAC\n");
		return 2;
	}
	frame[12] = 0x88;
	frame[13] = 0xb5;
	unsigned long count = strtoul(argv[4], NULL, 10);

	int fd = socket(AF_PACKET, SOCK_RAW, htons(ETH_P_ALL));
	if (fd < 0) {
		perror("rawframes: socket");
		return 1;
	}
	struct sockaddr_ll to = {0};
	to.sll_family = AF_PACKET;
	to.sll_ifindex = (int)if_nametoindex(argv[1]);
	to.sll_halen = 6;
	if (to.sll_ifindex == 0) {
		perror("rawframes: interface");
		return 1;
	}
	unsigned long sent = 0, errors = 0;
	for (unsigned long n = 0; n < count; n++) {
		if (random_dst)
			random_mac(frame, n);
		if (random_src)
			random_mac(frame + 6, n);
		memcpy(to.sll_addr, frame, 6);
		if (sendto(fd, frame, sizeof frame, 0, (struct sockaddr *)&to, sizeof to) == sizeof frame)
			sent++;
		else
			errors++;
	}
	printf("rawframes: sent=%lu errors=%lu\n", sent, errors);
	return errors == 0 ? 0 : 1;
}
