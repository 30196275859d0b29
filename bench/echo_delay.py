#!/usr/bin/env python3
"""A userspace ICMP echo responder that delays each reply: the jitter of the
live noise benchmark.

Run it inside the target's namespace with the kernel's own echo replies
turned off there (net.ipv4.icmp_echo_ignore_all=1, net.ipv6.icmp.echo_ignore_all=1),
so every reply the prober sees comes from here. Each reply waits
max(0, normal(mean, sd)) milliseconds, drawn from a seeded generator, so a
run can be repeated. It only ever answers echo requests that reached the
namespace, so it sends nothing anywhere else.
"""

import argparse
import random
import socket
import struct
import threading


def checksum(data):
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


def serve_v4(sock, delay):
    while True:
        packet, (src, _) = sock.recvfrom(65535)
        icmp = packet[(packet[0] & 0x0F) * 4 :]
        if len(icmp) < 8 or icmp[0] != 8 or icmp[1] != 0:
            continue
        reply = bytearray(b"\0\0\0\0" + icmp[4:])  # type 0 (echo reply), same id, seq and payload
        reply[2:4] = struct.pack("!H", checksum(bytes(reply)))
        later(delay(), sock.sendto, bytes(reply), (src, 0))


def serve_v6(sock, delay):
    # The kernel computes the checksum of ICMPv6 raw sockets itself.
    while True:
        icmp, addr = sock.recvfrom(65535)
        if len(icmp) < 8 or icmp[0] != 128 or icmp[1] != 0:
            continue
        reply = b"\x81\0\0\0" + icmp[4:]  # type 129 (echo reply)
        later(delay(), sock.sendto, reply, (addr[0], 0, 0, addr[3]))


def later(seconds, fn, *args):
    t = threading.Timer(seconds, fn, args)
    t.daemon = True
    t.start()


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mean-ms", type=float, required=True)
    ap.add_argument("--sd-ms", type=float, required=True)
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    lock = threading.Lock()

    def delay():
        with lock:
            return max(0.0, rng.gauss(args.mean_ms, args.sd_ms)) / 1000

    # Both sockets open before "ready": an echo that comes before its
    # socket exists would go unanswered.
    v4 = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    v6 = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_ICMPV6)
    threading.Thread(target=serve_v6, args=(v6, delay), daemon=True).start()
    print("echo_delay: ready", flush=True)
    serve_v4(v4, delay)


if __name__ == "__main__":
    main()
