# Stand-in for a tunneler that honours the tproxy contract: one catch-all on
# 127.0.0.1:$ZITI_CNI_TPROXY_PORT for TCP and UDP, reporting the original destination it saw.
# nftables datapath: the socket must be IP_TRANSPARENT (CAP_NET_RAW, its only capability).
# ebpf datapath: a plain socket and no capability; replies come from the intercepted address,
# which the CNI made local to the pod.
import os, socket, struct, sys, threading

IP_TRANSPARENT = 19
IP_RECVORIGDSTADDR = 20
port = int(os.environ['ZITI_CNI_TPROXY_PORT'])
transparent = os.environ.get('ZITI_CNI_DATAPATH', 'nftables') == 'nftables'

def tcp():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if transparent:
        s.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(('127.0.0.1', port))
    s.listen(128)
    ready.release()
    while True:
        c, peer = s.accept()
        dst = c.getsockname()
        c.sendall(f'tproxy proto=tcp orig_dst={dst[0]}:{dst[1]} peer={peer[0]}\n'.encode())
        c.close()

def udp():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    if transparent:
        s.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
    s.setsockopt(socket.SOL_IP, IP_RECVORIGDSTADDR, 1)
    s.bind(('127.0.0.1', port))
    ready.release()
    while True:
        data, anc, _, peer = s.recvmsg(2048, 1024)
        dst = None
        for level, typ, cdata in anc:
            if level == socket.SOL_IP and typ == IP_RECVORIGDSTADDR:
                dport, = struct.unpack('!H', cdata[2:4])
                dst = (socket.inet_ntoa(cdata[4:8]), dport)
        # Reply from the original destination, as a transparent proxy must.
        r = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        if transparent:
            r.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
        r.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        r.bind(dst)
        r.sendto(f'tproxy proto=udp orig_dst={dst[0]}:{dst[1]} peer={peer[0]}\n'.encode(), peer)
        r.close()

ready = threading.Semaphore(0)
for f in (tcp, udp):
    threading.Thread(target=f, daemon=True).start()
ready.acquire(); ready.acquire()
print('READY', flush=True)
threading.Event().wait()
