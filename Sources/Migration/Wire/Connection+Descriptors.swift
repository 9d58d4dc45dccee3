import Glibc
import Machine
import Synchronization

/// The descriptors a connection carries besides its bytes (SCM_RIGHTS, UNIX sockets only):
/// those to attach to the next write, and those received and not yet taken.
final class DescriptorChannel: Sendable {
    let received = ReceivedDescriptors()
    private let outgoing = Mutex<[Int32]>([])
    /// nil until asked: the socket is a UNIX socket (anything else reads and writes plainly).
    private let unix = Mutex<Bool?>(nil)

    func carries(_ fd: Int32) -> Bool {
        unix.withLock { u in
            if let u { return u }
            let answer = DescriptorPassing.isUnixSocket(fd)
            u = answer
            return answer
        }
    }

    func attach(_ fds: [Int32]) { outgoing.withLock { $0 = fds } }
    func pending() -> [Int32] { outgoing.withLock { $0 } }
    func sent() { outgoing.withLock { $0 = [] } }
}

extension Connection {
    /// read(2), or on a UNIX socket recvmsg(2) that keeps any descriptors that came along.
    func readSome(_ buffer: UnsafeMutableRawPointer?, _ count: Int) -> Int {
        guard descriptors.carries(fd) else { return Glibc.read(fd, buffer, count) }
        return DescriptorPassing.receive(fd, into: buffer, count: count, received: descriptors.received)
    }

    /// sendmsg(2) of `msg`'s iovecs; the descriptors attached with `send(_:descriptors:)` go
    /// with the first byte that leaves.
    func sendSome(_ msg: inout msghdr, flags: Int32) -> Int {
        let fds = descriptors.pending()
        guard !fds.isEmpty, let iov = msg.msg_iov else { return sendmsg(fd, &msg, flags) }
        let n = DescriptorPassing.send(fd, iov, count: Int(msg.msg_iovlen), descriptors: fds, flags: flags)
        if n > 0 { descriptors.sent() }
        return n
    }

    /// Sends message `M` with `fds` attached (SCM_RIGHTS; a UNIX socket only). The descriptors
    /// stay open here: the peer receives duplicates.
    public func send<M: WireMessage>(_ message: M, descriptors fds: [Int32]) throws {
        guard fds.count <= DescriptorPassing.maxPerMessage else {
            throw MigrationError.machine("\(fds.count) descriptors to hand over; at most \(DescriptorPassing.maxPerMessage) fit in one message")
        }
        guard fds.isEmpty || descriptors.carries(fd) else {
            throw MigrationError.usage("descriptors can only be handed over on a UNIX socket")
        }
        descriptors.attach(fds)
        defer { descriptors.sent() }
        try send(message)
    }
}

extension Connection {
    /// The descriptors received so far, left owned by the connection (closed with it): a user
    /// duplicates what it keeps.
    public func peekReceivedDescriptors() -> (fds: [Int32], lost: Bool) { descriptors.received.peek() }
}
