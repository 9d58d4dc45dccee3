import Foundation
import Glibc
import Machine

/// The extra data connections a target is taking, by index (1..<N): each incoming connection is
/// greeted on a thread of its own, which reserves its index once the token checks out and marks
/// it ready once the greeting is done; `wake` (an eventfd) is signalled when every index is ready.
final class ChannelClaims: @unchecked Sendable {
    private enum Slot { case free, reserved, ready(Connection) }
    private let lock = NSLock()
    private var slots: [Slot]
    private var over = false
    /// Without an eventfd the accept loop still notices within its 200 ms poll.
    let wake = try? EventFD()

    init(count: Int) { slots = Array(repeating: .free, count: count) }

    private var readyConnections: [Connection] {
        slots.compactMap { if case .ready(let c) = $0 { return c } else { return nil } }
    }

    var complete: Bool { lock.withLock { readyConnections.count == slots.count } }

    /// Reserves data connection `index` (1-based); false when it is out of range or taken, or
    /// the accept is over.
    func reserve(_ index: Int) -> Bool {
        lock.withLock {
            guard !over, index >= 1, index <= slots.count, case .free = slots[index - 1] else { return false }
            slots[index - 1] = .reserved
            return true
        }
    }

    /// Frees a reservation whose greeting failed.
    func release(_ index: Int) { lock.withLock { if !over { slots[index - 1] = .free } } }

    /// Takes `c` as data connection `index`, greeted; false when the accept is already over.
    func ready(_ index: Int, _ c: Connection) -> Bool {
        let done: Bool? = lock.withLock {
            guard !over else { return nil }
            slots[index - 1] = .ready(c)
            return readyConnections.count == slots.count
        }
        guard let done else { return false }
        if done { wake?.signal() }
        return true
    }

    /// Ends the accept: the connections taken (all closed unless `keep`); greetings still under
    /// way close theirs.
    func finish(keep: Bool) -> [Connection] {
        let taken = lock.withLock { () -> [Connection] in
            over = true
            return readyConnections
        }
        if !keep { taken.forEach { $0.close() } }
        return taken
    }
}

extension TargetSession {
    /// How long an extra connection may take to present itself.
    static let channelHelloTimeoutSeconds = 3

    /// After `accept` with N > 1 connections: takes the source's N − 1 extra connections from
    /// the listener — each must present this migration's token and an index not yet taken;
    /// anything else is closed with one line and the target keeps waiting, until the
    /// `--timeout` (default 30 s) runs out. Each connection is greeted on its own thread, so one
    /// that says nothing (it is dropped after 3 s) holds up none of the others.
    func acceptChannels(count: Int, token: [UInt8]) throws {
        let listener = target.takeListener()
        let tcp: Bool = { if case .tcp = options.endpoint { return true }; return false }()
        let deadline = Clock.monotonic() + (options.timeout ?? 30)
        let claims = ChannelClaims(count: count - 1)
        while !claims.complete {
            let due = { [cancellation] in cancellation.isCancelled || Clock.monotonic() > deadline }
            guard let fd = try Transport.acceptOne(listener, tcp: tcp, wake: claims.wake?.fd, cancelled: due) else {
                if claims.complete { break }
                let opened = claims.finish(keep: false).count
                try cancellation.check()
                throw MigrationError.stalled("the source opened \(opened + 1) of its \(count) connections within \(Int(options.timeout ?? 30)) s")
            }
            // The source says hello at once on its own connections.
            Transport.setReceiveTimeout(fd, seconds: Self.channelHelloTimeoutSeconds)
            let c = Connection(fd: fd)
            let greeting = ChannelGreeting(token: token, count: count, key: options.key, timeout: options.timeout,
                                           nonces: handshake.map { ($0.peerNonce, $0.localNonce) })
            let t = Thread { greeting.greet(c, claims: claims) }
            t.name = "mig-channel"
            t.start()
        }
        channelConnections = claims.finish(keep: true)
        target.closeListener()
    }
}

/// What a target needs to greet one extra data connection, on a thread of its own.
struct ChannelGreeting: Sendable {
    let token: [UInt8]
    let count: Int
    let key: [UInt8]?
    let timeout: Double?
    /// The handshake's (source, target) nonces, when there was one.
    let nonces: ([UInt8], [UInt8])?

    /// Preambles, the `channel` section, keys, `channelReady`; the connection is closed with one
    /// line unless it is one of this migration's and its index is free.
    func greet(_ c: Connection, claims: ChannelClaims) {
        var index = 0
        do {
            try c.writePreamble()
            let version = try c.readPreamble()
            guard version == Wire.streamVersion else { throw MigrationError.stream("stream version \(version)") }
            let hello = try c.expect(ChannelHello.self)
            guard let presented = [UInt8](hexString: hello.token), Auth.equal(presented, token) else {
                throw MigrationError.auth("wrong migration token")
            }
            guard hello.index >= 1 && hello.index < count, claims.reserve(hello.index) else {
                throw MigrationError.stream("data connection index \(hello.index) is out of range or taken")
            }
            index = hello.index
            if let key {
                guard let nonces else { throw MigrationError.auth("no handshake to derive the data connection's keys from") }
                try c.startSealing(StreamKeys.derive(key: key, sourceNonce: nonces.0, targetNonce: nonces.1,
                                                     role: .target, channel: hello.index))
            }
            try c.send(ChannelReady(index: hello.index))
            Transport.setReceiveTimeout(c.fd, seconds: 0)
            c.idleTimeout = timeout
            Transport.setTCPTimeouts(c.fd, seconds: timeout)
            if !claims.ready(index, c) { c.close() }
        } catch {
            if index > 0 { claims.release(index) }
            FileHandle.standardError.write(Data("swiftvmm: ignored a connection that is not one of this migration's (\(error))\n".utf8))
            c.close()
        }
    }
}
