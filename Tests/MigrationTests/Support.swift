import Foundation
import Glibc
import Synchronization
import Testing
@testable import Machine
@testable import Migration

// MARK: - Shared helpers of the MigrationTests files

/// A deterministic generator (SplitMix64), so a failing case can be replayed.
struct TestRandom: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    mutating func bytes(_ n: Int) -> [UInt8] {
        var out = [UInt8](repeating: 0, count: n)
        var i = 0
        while i < n {
            let w = next()
            for k in 0..<min(8, n - i) { out[i + k] = UInt8(truncatingIfNeeded: w >> (8 * UInt64(k))) }
            i += 8
        }
        return out
    }
}

/// Both ends of a connected UNIX stream socket, as migration connections.
func connectionPair() throws -> (Connection, Connection) {
    var fds: [Int32] = [-1, -1]
    guard socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &fds) == 0 else {
        throw MigrationError.connection("socketpair: \(String(cString: strerror(errno)))")
    }
    return (Connection(fd: fds[0]), Connection(fd: fds[1]))
}

/// Writes raw bytes to a descriptor (a hand-made, possibly hostile, stream). A socket whose
/// reader has gone fails the write with EPIPE; it never raises SIGPIPE, which would end the
/// whole test process.
func writeRaw(_ fd: Int32, _ bytes: [UInt8]) {
    bytes.withUnsafeBytes { p in
        guard let base = p.baseAddress else { return }
        var done = 0
        while done < p.count {
            var n = send(fd, base + done, p.count - done, Int32(MSG_NOSIGNAL))
            if n < 0 && errno == ENOTSOCK { n = Glibc.write(fd, base + done, p.count - done) }
            if n <= 0 { if n < 0 && errno == EINTR { continue }; return }
            done += n
        }
    }
}

/// Reads exactly `count` raw bytes from a descriptor.
func readRaw(_ fd: Int32, _ count: Int) -> [UInt8] {
    var out = [UInt8](repeating: 0, count: count)
    var done = 0
    while done < count {
        let n = out.withUnsafeMutableBytes { p in p.baseAddress.map { Glibc.read(fd, $0 + done, count - done) } ?? 0 }
        if n <= 0 { if n < 0 && errno == EINTR { continue }; break }
        done += n
    }
    return Array(out.prefix(done))
}

func be32(_ v: UInt32) -> [UInt8] { [UInt8(v >> 24), UInt8((v >> 16) & 0xff), UInt8((v >> 8) & 0xff), UInt8(v & 0xff)] }

/// A section exactly as the wire format describes it: type, flags, length, payload, CRC-32C.
func frame(_ type: UInt16, flags: UInt16 = 0, _ payload: [UInt8], length: UInt32? = nil) -> [UInt8] {
    let header = [UInt8(type >> 8), UInt8(type & 0xff), UInt8(flags >> 8), UInt8(flags & 0xff)]
        + be32(length ?? UInt32(payload.count))
    return header + payload + be32(CRC32C.checksum(header + payload))
}

/// Runs `body` on its own thread (the other end of a socket that must be read concurrently).
/// SIGPIPE is blocked on that thread only, so a writer whose reader gave up gets EPIPE instead
/// of killing the test process.
final class Background: @unchecked Sendable {
    private let done = DispatchSemaphore(value: 0)
    private var failure: (any Error)?

    init(_ body: @escaping @Sendable () throws -> Void) {
        let thread = Thread { [self] in
            var pipe = sigset_t()
            sigemptyset(&pipe)
            sigaddset(&pipe, SIGPIPE)
            pthread_sigmask(SIG_BLOCK, &pipe, nil)
            do { try body() } catch { failure = error }
            done.signal()
        }
        thread.start()
    }

    /// Waits for the thread and rethrows what it threw.
    func join() throws {
        done.wait()
        if let failure { throw failure }
    }
}

/// The message of the `MigrationError.stream` that `body` throws; records an issue otherwise.
@discardableResult
func expectStreamError(_ body: () throws -> Void, sourceLocation: SourceLocation = #_sourceLocation) -> String {
    do {
        try body()
        Issue.record("expected MigrationError.stream, nothing was thrown", sourceLocation: sourceLocation)
    } catch MigrationError.stream(let message) {
        return message
    } catch {
        Issue.record("expected MigrationError.stream, got \(error)", sourceLocation: sourceLocation)
    }
    return ""
}

/// A value shared with a `Background` thread.
final class Shared<T: Sendable>: Sendable {
    private let mutex: Mutex<T>
    init(_ value: T) { mutex = Mutex(value) }
    var value: T {
        get { mutex.withLock { $0 } }
        set { mutex.withLock { $0 = newValue } }
    }
}
