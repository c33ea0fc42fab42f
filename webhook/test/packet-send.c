// Sends one UDP datagram as a raw Ethernet frame through an AF_PACKET socket (needs
// CAP_NET_RAW): the way a root app with the runtime's default capabilities can send past
// an nftables output hook. Used by capabilities.kernel.test.ts.
// usage: packet-send IFNAME DST-MAC SRC-IP DST-IP DST-PORT
#include <arpa/inet.h>
#include <linux/if_packet.h>
#include <net/ethernet.h>
#include <net/if.h>
#include <netinet/ip.h>
#include <netinet/udp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

static unsigned short csum(const void *p, int n) {
  const unsigned short *w = p; unsigned long s = 0;
  for (; n > 1; n -= 2) s += *w++;
  if (n) s += *(const unsigned char *)w;
  s = (s >> 16) + (s & 0xffff); s += s >> 16;
  return (unsigned short)~s;
}

int main(int argc, char **argv) {
  if (argc != 6) { fprintf(stderr, "usage: %s IFNAME DST-MAC SRC-IP DST-IP DST-PORT\n", argv[0]); return 2; }
  int fd = socket(AF_PACKET, SOCK_RAW, htons(ETH_P_IP));
  if (fd < 0) { perror("socket(AF_PACKET)"); return 1; }
  struct ifreq ifr = {0};
  strncpy(ifr.ifr_name, argv[1], IFNAMSIZ - 1);
  if (ioctl(fd, SIOCGIFHWADDR, &ifr) < 0) { perror("SIOCGIFHWADDR"); return 1; }
  unsigned char frame[128] = {0};
  struct ether_header *eth = (void *)frame;
  unsigned int m[6];
  if (sscanf(argv[2], "%x:%x:%x:%x:%x:%x", &m[0], &m[1], &m[2], &m[3], &m[4], &m[5]) != 6) return 2;
  for (int i = 0; i < 6; i++) eth->ether_dhost[i] = (unsigned char)m[i];
  memcpy(eth->ether_shost, ifr.ifr_hwaddr.sa_data, 6);
  eth->ether_type = htons(ETHERTYPE_IP);
  const char payload[] = "packet-socket";
  struct iphdr *ip = (void *)(frame + sizeof *eth);
  struct udphdr *udp = (void *)((char *)ip + sizeof *ip);
  memcpy((char *)udp + sizeof *udp, payload, sizeof payload - 1);
  int udplen = (int)(sizeof *udp + sizeof payload - 1);
  *ip = (struct iphdr){ .ihl = 5, .version = 4, .ttl = 64, .protocol = IPPROTO_UDP, .tot_len = htons((unsigned short)(sizeof *ip + udplen)) };
  ip->saddr = inet_addr(argv[3]); ip->daddr = inet_addr(argv[4]);
  ip->check = csum(ip, sizeof *ip);
  udp->source = htons(40000); udp->dest = htons((unsigned short)atoi(argv[5])); udp->len = htons((unsigned short)udplen);
  struct sockaddr_ll to = { .sll_family = AF_PACKET, .sll_ifindex = (int)if_nametoindex(argv[1]), .sll_halen = 6 };
  memcpy(to.sll_addr, eth->ether_dhost, 6);
  ssize_t n = sendto(fd, frame, sizeof *eth + sizeof *ip + udplen, 0, (struct sockaddr *)&to, sizeof to);
  if (n < 0) { perror("sendto"); return 1; }
  printf("sent %zd bytes\n", n);
  return 0;
}
