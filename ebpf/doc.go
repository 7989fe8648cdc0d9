// Package ebpf is shunt's eBPF fast path: kernel programs that capture a meshed pod's outbound TCP
// at connect(2) and its DNS over UDP at sendmsg(2) and connect(2), answer the proxy's
// SO_ORIGINAL_DST, and move bytes between the app and its sidecar socket to socket, plus the Go
// loader that attaches them to a cgroup v2 and registers pods.
//
// One Load per node attaches the programs (as bpf_links, in multi mode, so other BPF users of the
// cgroup keep working) and pins maps and links under a bpffs directory; the CNI plugin then uses
// Open and AddPod / RemovePod for each pod. A pod is its network namespace, named by the namespace
// cookie (NetNSCookie): sockets of any other namespace are never touched.
//
// What the programs do, per traffic path of docs/flows.md:
//
//   - F2 (app → remote): cgroup/connect4 and connect6 decide as nat ISTIO_OUTPUT would (see
//     PodFromConfig for what is and is not represented), rewrite a captured destination to
//     127.0.0.1 (or ::1, or ::ffff:127.0.0.1 for an IPv4-mapped destination, which is decided by
//     the IPv4 rules) at the pod's ProxyPort and keep the original destination in the socket's
//     storage. cgroup/getsockopt answers SO_ORIGINAL_DST (SOL_IP) and IP6T_SO_ORIGINAL_DST
//     (SOL_IPV6) on the proxy's accepted socket; cgroup/getpeername4/6 show the app the peer it
//     dialed. An unbound app socket is bound to the pod's own address of the destination's family
//     (bpf_bind, port chosen at connect), so the proxy sees the connection come from the pod's IP
//     to 127.0.0.1:ProxyPort, exactly the packets nat REDIRECT makes, and the rules underneath
//     return them as REDIRECT's (nat "-o lo ! --uid-owner RETURN", mangle "-i lo RETURN").
//     sockops hands the original destination from the app's end to the proxy's accepted end when
//     that end is established (shunt_origkey, then the end's own storage), so nothing is left to
//     clean up at close and no state callbacks run.
//   - F4, F5, F6, F7, F8: the proxy's uids and gids, localhost, the pod's own IPs, the include and
//     exclude lists and IPv6 decide as in the engine's rules. The proxy's hairpin to its own pod
//     IP (rule 2) is left to the nat rules.
//   - F9: DNS to a captured server (DNSServers, or any with DNSAll) goes to the agent's DNS proxy
//     (15053) on loopback, decided as TCP is (the proxy's own queries are never touched). TCP at
//     connect(2), like F2. UDP: cgroup/sendmsg4 and sendmsg6 rewrite a datagram sent to an
//     address, connect4 and connect6 a UDP connect(2) (getpeername then shows the server), and
//     cgroup/recvmsg4 and recvmsg6 show the DNS proxy's answer as coming from the server asked,
//     port 53. The server is kept in the socket's storage, the last one per socket: one
//     unconnected socket asking two captured servers at once sees both answers come from the last
//     one asked (musl's resolver does that, and accepts an answer from any server it asked;
//     glibc, Go and c-ares connect a socket per server or query). Other UDP is left alone. Stats.DNSRedirected and
//     DNSAnswered count the UDP side.
//   - F1, F3: inbound capture stays with the nat/mangle rules; the proxy's passthrough connection
//     from 127.0.0.6 / ::6 to the app is accelerated by sk_msg like the app↔proxy legs.
//   - Owners: the programs judge a connection or datagram by the ids the owner match does
//     (xt_owner, nftables' meta skuid/skgid): the fsuid and fsgid of whoever opened the socket,
//     as the user namespace owning the pod's network namespace sees them. So setuid programs,
//     sockets handed between processes and user-namespaced pods (hostUsers: false, whose proxy
//     runs as 1337 in the pod and as, say, 101337 on the node) are decided as by the rules; an id
//     the namespace does not map is no one's. The programs read them from the kernel's
//     structures (sk->sk_socket->file->f_cred, the network namespace's uid_map and gid_map)
//     through bpf_rdonly_cast, relocated against the kernel's BTF at load (Linux 6.7). A kernel
//     without them runs a second object built from the same source (redirectTask, see gen.go),
//     which judges by the real ids of the task calling connect(2) or sendmsg(2): the same for a
//     proxy started as its own user, not for setuid programs or sockets handed between processes,
//     and wrong for user-namespaced pods, which AddPod then refuses (they stay on their rules).
//     OwnerIDs says which one the kernel runs.
//
// Where the fast path differs from the nat rules:
//
//   - "-o lo" is approximated as loopback, ::6 and the pod's own IPs; another address assigned in
//     the pod's namespace counts as remote.
//   - A UDP socket connected to a captured DNS server is bound to loopback, as a TCP one is: to
//     connect(2) it to a remote address afterwards it must first disconnect (AF_UNSPEC), or connect
//     fails with EINVAL. With the nat rules it is bound to the pod's address.
//   - The conntrack zones of the nat rules' DNS capture play no part: an app's UDP query never
//     carries the server's address, so its leg and the proxy's upstream leg cannot collide.
//   - A connection whose peer socket was not yet in the socket hash when it first sent (the
//     proxy's accepted socket is inserted when the handshake's last ACK is processed, which can
//     lag connect(2)) is sent through TCP for good, counted in Stats.RedirectMisses and
//     MessagesFallback, so that redirected bytes never overtake bytes in the TCP receive queue.
//
// sk_msg moves each sendmsg(2) to the peer socket's ingress queue. A receiver that reads with
// splice(2) (Go's io.Copy between two TCP connections) stalls on such bytes on current kernels:
// Pod.NoSockMsg keeps a pod's sockets out of the socket hash, and so out of sk_msg, while
// keeping every other part of the fast path.
package ebpf
