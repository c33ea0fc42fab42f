// SPDX-License-Identifier: GPL-2.0
// ziti-cni eBPF datapath for tproxy mode: TPROXY semantics without IP_TRANSPARENT.
// Attached by the agent as a tc ingress filter on the pod's `lo`. The nft steer chain marks
// app traffic to intercepted addresses with (0x02a1 << 16) | catch-all port and policy
// routing loops it through `lo`; here a marked packet is handed to the catch-all socket on
// 127.0.0.1 (or ::1) with bpf_sk_assign, original destination intact. The listener needs no
// capability (DESIGN.md: verified with a uid 65534 listener).
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define MARK_TAG 0x02a10000
#define MARK_MASK 0xffff0000

static __always_inline int assign(struct __sk_buff *skb, struct bpf_sock *sk)
{
	long err = bpf_sk_assign(skb, sk, 0);
	bpf_sk_release(sk);
	return err ? TC_ACT_SHOT : TC_ACT_OK;
}

/* TCP: an existing connection's own socket first, else the catch-all listener. */
static __always_inline int steer_tcp(struct __sk_buff *skb, struct bpf_sock_tuple *t, __u32 len,
				     struct bpf_sock_tuple *listener)
{
	struct bpf_sock *sk = bpf_skc_lookup_tcp(skb, t, len, BPF_F_CURRENT_NETNS, 0);
	if (sk) {
		if (sk->state != BPF_TCP_LISTEN)
			return assign(skb, sk);
		bpf_sk_release(sk);
	}
	sk = bpf_skc_lookup_tcp(skb, listener, len, BPF_F_CURRENT_NETNS, 0);
	if (!sk)
		return TC_ACT_OK; /* nobody listens: the connection is refused */
	if (sk->state != BPF_TCP_LISTEN) {
		bpf_sk_release(sk);
		return TC_ACT_OK;
	}
	return assign(skb, sk);
}

static __always_inline int steer_udp(struct __sk_buff *skb, struct bpf_sock_tuple *listener, __u32 len)
{
	struct bpf_sock *sk = bpf_sk_lookup_udp(skb, listener, len, BPF_F_CURRENT_NETNS, 0);
	if (!sk)
		return TC_ACT_OK;
	return assign(skb, sk);
}

/* The L4 part is the same for both families; only where the ports live in the tuple differs. */
static __always_inline int steer_l4(struct __sk_buff *skb, void *l4, void *end, __u8 proto,
				    struct bpf_sock_tuple *t, struct bpf_sock_tuple *l, __u32 len,
				    __be16 *t_sport, __be16 *t_dport, __be16 *l_sport)
{
	if (proto == IPPROTO_TCP) {
		struct tcphdr *th = l4;
		if ((void *)(th + 1) > end)
			return TC_ACT_OK;
		*t_sport = th->source;
		*t_dport = th->dest;
		*l_sport = th->source;
		return steer_tcp(skb, t, len, l);
	}
	if (proto == IPPROTO_UDP) {
		struct udphdr *uh = l4;
		if ((void *)(uh + 1) > end)
			return TC_ACT_OK;
		*l_sport = uh->source;
		return steer_udp(skb, l, len);
	}
	return TC_ACT_OK;
}

SEC("tc")
int ziti_tproxy(struct __sk_buff *skb)
{
	if ((skb->mark & MARK_MASK) != MARK_TAG)
		return TC_ACT_OK;
	__be16 port = bpf_htons(skb->mark & 0xffff);
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	if ((void *)(eth + 1) > end)
		return TC_ACT_OK;

	struct bpf_sock_tuple t = {}, l = {};
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *ip = (void *)(eth + 1);
		if ((void *)(ip + 1) > end || ip->ihl != 5)
			return TC_ACT_OK;
		t.ipv4.saddr = l.ipv4.saddr = ip->saddr;
		t.ipv4.daddr = ip->daddr;
		l.ipv4.daddr = bpf_htonl(0x7f000001); /* 127.0.0.1 */
		l.ipv4.dport = port;
		return steer_l4(skb, ip + 1, end, ip->protocol, &t, &l, sizeof(t.ipv4),
				&t.ipv4.sport, &t.ipv4.dport, &l.ipv4.sport);
	}
	if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6 = (void *)(eth + 1);
		if ((void *)(ip6 + 1) > end)
			return TC_ACT_OK;
		__builtin_memcpy(t.ipv6.saddr, &ip6->saddr, 16);
		__builtin_memcpy(l.ipv6.saddr, &ip6->saddr, 16);
		__builtin_memcpy(t.ipv6.daddr, &ip6->daddr, 16);
		l.ipv6.daddr[3] = bpf_htonl(1); /* ::1 */
		l.ipv6.dport = port;
		return steer_l4(skb, ip6 + 1, end, ip6->nexthdr, &t, &l, sizeof(t.ipv6),
				&t.ipv6.sport, &t.ipv6.dport, &l.ipv6.sport);
	}
	return TC_ACT_OK;
}

char _license[] SEC("license") = "GPL";
