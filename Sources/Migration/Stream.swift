import Foundation
import Glibc

/// The migration wire format.
///
/// Each direction of the connection starts with a 16-byte preamble — the magic `SWIFTVMM`,
/// the stream version (u32, big-endian) and a reserved u32 — followed by sections:
///
/// ```
/// u16 type | u16 flags | u32 length | length bytes of payload | u32 CRC-32C of the previous bytes
/// ```
///
/// Compatibility rules, release to release:
/// - `streamVersion` changes only when an old reader could not make sense of the stream at
///   all; a receiver refuses any other version, naming both.
/// - A reader skips a section type it does not know when the section's `optional` flag is set,
///   and refuses the stream — naming the type — when it is not.
/// - Inside FDT payloads (configuration, machine state) a reader ignores properties and nodes
///   it does not know. A writer that adds something an older reader must not ignore lists it
///   by name in the root property `required-features`; a reader refuses a stream whose
///   `required-features` holds a name it does not know.
/// - Numbers are big-endian; lengths are checked against `maxSectionLength` before any
///   allocation; every section is checksummed.
public enum Wire {
    public static let magic: [UInt8] = Array("SWIFTVMM".utf8)
    public static let streamVersion: UInt32 = 1
    public static let maxSectionLength = 64 << 20
    /// FDT feature names this reader understands (see `required-features`).
    public static let knownFeatures: Set<String> = ["pages-v1", "state-v1"]
}

/// Section types. Values are never reused.
public enum SectionType: UInt16, Sendable, CaseIterable {
    case hello = 1          // S→R: versions, VM name/UUID, nonce (JSON)
    case helloReply = 2     // R→S: versions, nonce, HMAC proof (JSON)
    case auth = 3           // S→R: HMAC proof (JSON)
    case config = 4         // S→R: the machine's configuration for pre-checks (FDT)
    case accept = 5         // R→S: pre-checks passed, target built (JSON)
    case error = 6          // either way: a one-line reason; the connection ends (JSON)
    case pages = 7          // S→R: a batch of guest pages
    case roundEnd = 8       // S→R: end of a pre-copy round, with its statistics (JSON)
    case state = 9          // S→R: vCPU, irqchip, clock and device state (FDT)
    case ready = 10         // R→S: state loaded; the target waits for `go`
    case go = 11            // S→R: commit — the target may run the guest; the source never will again
    case running = 12       // R→S: the guest runs on the target (JSON: timestamps)
    case cancel = 13        // S→R: abort; the target discards everything (JSON)
    case progress = 14      // S→R: sender progress for the target's status (JSON, optional)
    case roundAck = 15      // R→S: every page of the round is in guest memory (flow control)

    public var name: String { String(describing: self) }
}

/// One decoded section.
public struct Section: Sendable {
    public var type: SectionType
    public var payload: [UInt8]

    /// The payload as a JSON object (for the small control sections).
    public func json() throws -> [String: Any] {
        guard let o = try? JSONSerialization.jsonObject(with: Data(payload)) as? [String: Any] else {
            throw MigrationError.stream("section \(type.name) does not hold a JSON object")
        }
        return o
    }
}

/// A connection carrying sections both ways. Reads and writes are blocking; `abort()` from
/// another thread makes a blocked call fail.
public final class Connection: @unchecked Sendable {
    public let fd: Int32
    private let closeLock = NSLock()
    private var closed = false
    /// Bytes written and read, for statistics.
    public private(set) var bytesWritten: UInt64 = 0
    public private(set) var bytesRead: UInt64 = 0
    private var readBuffer = [UInt8](repeating: 0, count: 256 * 1024)
    private var readStart = 0
    private var readEnd = 0

    public init(fd: Int32) { self.fd = fd }
    deinit { close() }

    public func close() {
        closeLock.lock(); defer { closeLock.unlock() }
        if !closed { closed = true; Glibc.close(fd) }
    }

    /// Makes blocked reads and writes return with an error (from any thread).
    public func abort() { shutdown(fd, Int32(SHUT_RDWR)) }

    // MARK: raw I/O

    func writeAll(_ parts: [UnsafeRawBufferPointer]) throws {
        var iov = parts.map { iovec(iov_base: UnsafeMutableRawPointer(mutating: $0.baseAddress), iov_len: $0.count) }
        var index = 0
        while index < iov.count {
            let n = iov[index...].withUnsafeBufferPointer { p in
                writev(fd, p.baseAddress, Int32(min(p.count, 64)))
            }
            if n < 0 {
                if errno == EINTR { continue }
                throw MigrationError.connection("connection lost while sending: \(String(cString: strerror(errno)))")
            }
            bytesWritten += UInt64(n)
            var left = n
            while left > 0 && index < iov.count {
                if left >= iov[index].iov_len { left -= iov[index].iov_len; index += 1 } else {
                    iov[index].iov_base = iov[index].iov_base.map { $0 + left }
                    iov[index].iov_len -= left
                    left = 0
                }
            }
            while index < iov.count && iov[index].iov_len == 0 { index += 1 }
        }
    }

    func readExactly(_ out: UnsafeMutableRawBufferPointer) throws {
        var done = 0
        while done < out.count {
            if readStart < readEnd {
                let n = min(readEnd - readStart, out.count - done)
                readBuffer.withUnsafeBytes { src in
                    if let d = out.baseAddress, let s = src.baseAddress { (d + done).copyMemory(from: s + readStart, byteCount: n) }
                }
                readStart += n
                done += n
                continue
            }
            let want = out.count - done
            if want >= readBuffer.count / 2, let d = out.baseAddress {
                // Big payloads go straight into the caller's buffer.
                let n = recv(fd, d + done, want, 0)
                if n < 0 { if errno == EINTR { continue }; throw MigrationError.connection("connection lost while receiving: \(String(cString: strerror(errno)))") }
                if n == 0 { throw MigrationError.connection("connection closed by peer") }
                bytesRead += UInt64(n)
                done += n
                continue
            }
            let n = readBuffer.withUnsafeMutableBytes { b in recv(fd, b.baseAddress, b.count, 0) }
            if n < 0 { if errno == EINTR { continue }; throw MigrationError.connection("connection lost while receiving: \(String(cString: strerror(errno)))") }
            if n == 0 { throw MigrationError.connection("connection closed by peer") }
            bytesRead += UInt64(n)
            readStart = 0
            readEnd = n
        }
    }

    /// True when a section (or EOF) is waiting to be read, without blocking.
    public func hasIncoming() -> Bool {
        if readStart < readEnd { return true }
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        return poll(&p, 1, 0) > 0
    }

    /// Waits up to `timeoutMs` for incoming data.
    public func waitIncoming(timeoutMs: Int32) -> Bool {
        if readStart < readEnd { return true }
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        return poll(&p, 1, timeoutMs) > 0
    }

    // MARK: preamble

    public func writePreamble(version: UInt32 = Wire.streamVersion) throws {
        var b = Wire.magic
        withUnsafeBytes(of: version.bigEndian) { b.append(contentsOf: $0) }
        b.append(contentsOf: [0, 0, 0, 0])
        try b.withUnsafeBytes { p throws in try writeAll([p]) }
    }

    /// Reads the peer's preamble and returns its stream version.
    public func readPreamble() throws -> UInt32 {
        var b = [UInt8](repeating: 0, count: 16)
        try b.withUnsafeMutableBytes { p throws in try readExactly(p) }
        guard Array(b.prefix(8)) == Wire.magic else {
            throw MigrationError.stream("not a swiftvmm migration stream (bad magic)")
        }
        return b[8..<12].reduce(0) { ($0 << 8) | UInt32($1) }
    }

    // MARK: sections

    public func send(_ type: SectionType, _ payload: UnsafeRawBufferPointer, optional: Bool = false) throws {
        try sendParts(type, [payload], optional: optional)
    }

    /// Sends one section whose payload is the concatenation of `parts` (no copy).
    public func sendParts(_ type: SectionType, _ parts: [UnsafeRawBufferPointer], optional: Bool = false) throws {
        let total = parts.reduce(0) { $0 + $1.count }
        var header = [UInt8](repeating: 0, count: 8)
        header[0] = UInt8(type.rawValue >> 8); header[1] = UInt8(type.rawValue & 0xff)
        header[3] = optional ? 1 : 0
        let len = UInt32(total)
        header[4] = UInt8(len >> 24); header[5] = UInt8((len >> 16) & 0xff); header[6] = UInt8((len >> 8) & 0xff); header[7] = UInt8(len & 0xff)
        var crc = header.withUnsafeBytes { CRC32C.update(0, $0) }
        for p in parts { crc = CRC32C.update(crc, p) }
        let trailer = withUnsafeBytes(of: crc.bigEndian) { Array($0) }
        try header.withUnsafeBytes { h in
            try trailer.withUnsafeBytes { t in
                try writeAll([h] + parts + [t])
            }
        }
    }

    public func send(_ type: SectionType, bytes: [UInt8], optional: Bool = false) throws {
        try bytes.withUnsafeBytes { p throws in try send(type, p, optional: optional) }
    }

    public func send(_ type: SectionType, json: [String: Any], optional: Bool = false) throws {
        let data = (try? JSONSerialization.data(withJSONObject: json, options: [.sortedKeys])) ?? Data("{}".utf8)
        try send(type, bytes: Array(data), optional: optional)
    }

    /// Sends an error section (best effort: the connection may already be gone).
    public func sendError(_ message: String) {
        try? send(.error, json: ["desc": message])
    }

    /// Reads the next section the reader understands, skipping unknown optional ones.
    public func receive() throws -> Section {
        while true {
            var header = [UInt8](repeating: 0, count: 8)
            try header.withUnsafeMutableBytes { p throws in try readExactly(p) }
            let rawType = UInt16(header[0]) << 8 | UInt16(header[1])
            let optional = header[3] & 1 != 0
            let len = Int(header[4..<8].reduce(UInt32(0)) { ($0 << 8) | UInt32($1) })
            guard len <= Wire.maxSectionLength else {
                throw MigrationError.stream("section type \(rawType) claims \(len) bytes, more than the \(Wire.maxSectionLength >> 20) MiB limit")
            }
            var readError: Error?
            let payload = [UInt8](unsafeUninitializedCapacity: len) { buf, count in
                do { try readExactly(UnsafeMutableRawBufferPointer(buf)) } catch { readError = error }
                count = len
            }
            if let readError { throw readError }
            var trailer = [UInt8](repeating: 0, count: 4)
            try trailer.withUnsafeMutableBytes { p throws in try readExactly(p) }
            var crc = header.withUnsafeBytes { CRC32C.update(0, $0) }
            crc = payload.withUnsafeBytes { CRC32C.update(crc, $0) }
            let want = trailer.reduce(UInt32(0)) { ($0 << 8) | UInt32($1) }
            let typeName = SectionType(rawValue: rawType)?.name ?? "type \(rawType)"
            guard crc == want else {
                throw MigrationError.stream("checksum mismatch in \(typeName) section (\(len) bytes): the stream was corrupted")
            }
            guard let type = SectionType(rawValue: rawType) else {
                if optional { continue }
                throw MigrationError.stream("unknown required section type \(rawType): the sender is newer than this swiftvmm")
            }
            return Section(type: type, payload: payload)
        }
    }

    /// Receives a section and fails unless it is of `type` (an `error` section becomes `.peer`).
    public func expect(_ type: SectionType) throws -> Section {
        let s = try receive()
        if s.type == type { return s }
        if s.type == .error {
            let desc = (try? s.json())?["desc"] as? String ?? "unknown error"
            throw MigrationError.peer(desc)
        }
        if s.type == .cancel {
            let desc = (try? s.json())?["desc"] as? String ?? "cancelled by the source"
            throw MigrationError.cancelled(desc)
        }
        throw MigrationError.stream("expected a \(type.name) section, got \(s.type.name)")
    }
}
