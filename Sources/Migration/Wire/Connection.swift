import Foundation
import Glibc

/// A connection carrying sections both ways. Reads and writes are blocking; `abort()` from
/// another thread makes a blocked call fail.
public final class Connection: ByteSource, @unchecked Sendable {
    public let fd: Int32
    private let closeLock = NSLock()
    /// Sections are written whole, one thread at a time (`send --connections N` sends pages on
    /// this connection from a lane thread while the migration thread sends disk runs).
    private let sendLock = NSLock()
    /// And read whole, one thread at a time (a failed send reads the peer's last word).
    private let receiveLock = NSLock()
    private var closed = false
    /// Bytes written and read, for statistics.
    public private(set) var bytesWritten: UInt64 = 0
    public private(set) var bytesRead: UInt64 = 0
    private var readBuffer = [UInt8](repeating: 0, count: 256 * 1024)
    /// A read or write that makes no progress for this long fails with `.stalled` (nil: wait
    /// forever). A peer that closes is noticed at once; this is for one that stops answering.
    public var idleTimeout: Double?
    private var sealer: SectionSealer?
    /// Where sections are sealed in place (grown to the largest section sent, then reused).
    private var sealBuffer: [UInt8] = []
    private var opener: SectionOpener?
    private var readStart = 0
    private var readEnd = 0

    /// A connection that only reads: what it would send is dropped (a captured stream replayed).
    let discardsWrites: Bool
    /// Descriptors passed along with the bytes (a local hand-over); unclaimed ones close with it.
    let descriptors = DescriptorChannel()

    public init(fd: Int32, discardingWrites: Bool = false) {
        self.fd = fd
        self.discardsWrites = discardingWrites
    }
    deinit { close() }

    public func close() {
        closeLock.lock(); defer { closeLock.unlock() }
        if !closed { closed = true; Glibc.close(fd); descriptors.received.closeAll() }
    }

    /// Makes blocked reads and writes return with an error (from any thread).
    public func abort() { shutdown(fd, Int32(SHUT_RDWR)) }

    /// Makes a blocked read return end-of-stream; writing still works (from any thread).
    public func abortReads() { shutdown(fd, Int32(SHUT_RD)) }

    private var reader: SectionReader { SectionReader(self) }

    /// From now on every section is sealed both ways (after a keyed handshake).
    func startSealing(_ keys: StreamKeys) throws {
        sealer = try SectionSealer(key: keys.seal)
        opener = try SectionOpener(key: keys.open)
    }

    /// Sections are sealed.
    public var isSealed: Bool { sealer != nil }

    // MARK: raw I/O

    func writeAll(_ parts: [UnsafeRawBufferPointer]) throws {
        if discardsWrites { return }
        var iov = parts.map { iovec(iov_base: UnsafeMutableRawPointer(mutating: $0.baseAddress), iov_len: $0.count) }
        var index = 0
        while index < iov.count && iov[index].iov_len == 0 { index += 1 }
        while index < iov.count {
            // sendmsg with MSG_NOSIGNAL: a peer that hung up is an error here, never SIGPIPE.
            let n = iov[index...].withUnsafeMutableBufferPointer { p -> Int in
                var msg = msghdr()
                msg.msg_iov = p.baseAddress
                msg.msg_iovlen = min(p.count, 64)
                return sendSome(&msg, flags: Int32(MSG_NOSIGNAL | MSG_DONTWAIT))
            }
            if n < 0 {
                if errno == EINTR { continue }
                if errno == EAGAIN || errno == EWOULDBLOCK { try waitReady(Int16(POLLOUT), "sending"); continue }
                throw lostWhileSending(errno)
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

    /// Why a write failed: the reason the peer gave before it hung up, when it gave one.
    private func lostWhileSending(_ e: Int32) -> MigrationError {
        let lost = MigrationError.connection("connection lost while sending: \(String(cString: strerror(e)))")
        guard waitIncoming(timeoutMs: 100), let s = try? receive() else { return lost }
        do { try Self.raiseIfAbort(s) } catch let m as MigrationError { return m } catch {}
        return lost
    }

    public func readExactly(_ out: UnsafeMutableRawBufferPointer) throws {
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
            try waitReady(Int16(POLLIN), "receiving")
            let n: Int
            if want >= readBuffer.count / 2, let d = out.baseAddress {
                // Big payloads go straight into the caller's buffer.
                n = readSome(d + done, want)
            } else {
                n = readBuffer.withUnsafeMutableBytes { b in readSome(b.baseAddress, b.count) }
            }
            if n < 0 {
                if errno == EINTR { continue }
                if errno == EAGAIN || errno == EWOULDBLOCK {
                    throw MigrationError.stalled("no data from the peer within its receive timeout")
                }
                throw MigrationError.connection("connection lost while receiving: \(String(cString: strerror(errno)))")
            }
            if n == 0 { throw MigrationError.connection(discardsWrites ? "the captured stream ends here" : "connection closed by peer") }
            bytesRead += UInt64(n)
            if want >= readBuffer.count / 2 { done += n } else { readStart = 0; readEnd = n }
        }
    }

    /// Waits until the socket is ready for `events`, at most `idleTimeout`.
    private func waitReady(_ events: Int16, _ doing: String) throws {
        guard let timeout = idleTimeout else { return }
        var p = pollfd(fd: fd, events: events, revents: 0)
        while true {
            let r = poll(&p, 1, Int32(min(timeout * 1000, Double(Int32.max))))
            if r < 0 && errno == EINTR { continue }
            if r == 0 {
                throw MigrationError.stalled(String(format: "the peer stopped answering: nothing moved for %g s while %@", timeout, doing))
            }
            return
        }
    }

    /// True when a section (or EOF) is waiting to be read, without blocking.
    public func hasIncoming() -> Bool { waitIncoming(timeoutMs: 0) }

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
    public func readPreamble() throws -> UInt32 { try reader.readPreamble() }

    // MARK: sections

    /// Sends one section whose payload is the concatenation of `parts` (no copy).
    public func send(_ type: SectionType, parts: [UnsafeRawBufferPointer], optional: Bool = false) throws {
        sendLock.lock(); defer { sendLock.unlock() }
        if let sealer { return try sendSealed(type, parts: parts, optional: optional, sealer) }
        let total = parts.reduce(0) { $0 + $1.count }
        let header = SectionFraming.header(type: type.rawValue, optional: optional, length: total)
        var crc = header.withUnsafeBytes { CRC32C.update(0, $0) }
        for p in parts { crc = CRC32C.update(crc, p) }
        let trailer = SectionFraming.trailer(crc)
        try header.withUnsafeBytes { h in
            try trailer.withUnsafeBytes { t in
                try writeAll([h] + parts + [t])
            }
        }
    }

    private func sendSealed(_ type: SectionType, parts: [UnsafeRawBufferPointer], optional: Bool, _ sealer: SectionSealer) throws {
        let count = parts.reduce(0) { $0 + $1.count } + 4
        let header = SectionFraming.header(type: SectionType.sealed.rawValue, optional: false,
                                           length: count + SectionSealer.tagSize)
        if sealBuffer.count < count + SectionSealer.tagSize {
            sealBuffer = [UInt8](repeating: 0, count: count + SectionSealer.tagSize)
        }
        try sealBuffer.withUnsafeMutableBytes { buf throws in
            let body = UnsafeMutableRawBufferPointer(rebasing: buf[0..<(count + SectionSealer.tagSize)])
            var at = 0
            for p in parts where p.count > 0 {
                if let src = p.baseAddress, let dst = body.baseAddress { (dst + at).copyMemory(from: src, byteCount: p.count) }
                at += p.count
            }
            body[at] = UInt8(type.rawValue >> 8); body[at + 1] = UInt8(type.rawValue & 0xff)
            body[at + 2] = 0; body[at + 3] = optional ? 1 : 0
            try sealer.seal(body, count: count, header: header)
            try header.withUnsafeBytes { h in try writeAll([h, UnsafeRawBufferPointer(body)]) }
        }
    }

    public func send(_ type: SectionType, bytes: [UInt8], optional: Bool = false) throws {
        try bytes.withUnsafeBytes { p throws in try send(type, parts: [p], optional: optional) }
    }

    /// Sends a control message.
    public func send<M: WireMessage>(_ message: M, optional: Bool = false) throws {
        try send(M.section, bytes: MessageCodec.encode(message), optional: optional)
    }

    /// Sends an error section (best effort: the connection may already be gone).
    public func sendError(_ message: String) {
        try? send(ErrorReport(desc: message))
    }

    /// Reads the next section the reader understands, skipping unknown optional ones.
    public func receive() throws -> Section {
        receiveLock.lock(); defer { receiveLock.unlock() }
        return try reader.read(opener: opener)
    }

    /// Like `receive()`, but a `pages` section comes back already applied by `decoder` (one
    /// decoder per receiving thread): on an unsealed stream a raw batch is read straight into
    /// its guest pages, and the payload returned may hold only the batch's header and bitmaps.
    public func receive(applying decoder: PageDecoder) throws -> Section {
        receiveLock.lock(); defer { receiveLock.unlock() }
        guard let opener else { return try reader.read(applying: decoder) }
        let section = try reader.read(opener: opener)
        if section.type == .pages { try decoder.apply(section.payload) }
        return section
    }

    /// Receives a section and fails unless it is of `type` (an `error` section becomes `.peer`,
    /// a `cancel` section `.cancelled`).
    public func expect(_ type: SectionType) throws -> Section {
        let s = try receive()
        if s.type == type { return s }
        try Self.raiseIfAbort(s)
        throw MigrationError.stream("expected a \(type.name) section, got \(s.type.name)")
    }

    /// Receives message `M`, failing on anything else.
    public func expect<M: WireMessage>(_ type: M.Type) throws -> M {
        try expect(M.section).message(M.self)
    }

    /// Throws the peer's reason when `s` is an `error` or `cancel` section.
    static func raiseIfAbort(_ s: Section) throws {
        if s.type == .error {
            throw MigrationError.peer((try? s.message(ErrorReport.self))?.desc ?? "unknown error")
        }
        if s.type == .cancel {
            throw MigrationError.cancelled((try? s.message(CancelNotice.self))?.desc ?? "cancelled by the source")
        }
    }
}
