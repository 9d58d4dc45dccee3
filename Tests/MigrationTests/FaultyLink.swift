import Foundation
import Glibc
@testable import Migration

/// A proxy between a migration source and its target that can break the stream on purpose:
/// flip a byte, or hang up, once a given number of bytes has gone one way.
final class FaultyLink: @unchecked Sendable {
    enum Fault {
        /// Flip one byte of the source's stream at this offset.
        case flipSourceByte(at: Int)
        /// Close both sides once the source has sent this many bytes.
        case hangUpAfterSourceBytes(Int)
        /// Close both sides as soon as the target sends a section of this type.
        case hangUpWhenTargetSends(SectionType)
        /// Close both sides as soon as the source sends a section of this type (unsealed streams).
        case hangUpWhenSourceSends(SectionType)
        /// Pass everything through (the source's bytes are kept in `captured`).
        case none
    }

    /// Everything the source sent through the link.
    var captured: [UInt8] { lock.lock(); defer { lock.unlock() }; return sourceBytes }
    private var sourceBytes: [UInt8] = []

    let endpoint: Endpoint
    private let listener: Int32
    private let fault: Fault
    private let lock = NSLock()
    private var fds: [Int32] = []

    init(in dir: URL, to target: Endpoint, fault: Fault) throws {
        endpoint = .unix(path: dir.appendingPathComponent("link.sock").path)
        listener = try Transport.listen(endpoint)
        self.fault = fault
        let t = Thread { [self] in self.serve(target) }
        t.start()
    }

    deinit {
        shutDown()
        close(listener)
    }

    private func shutDown() {
        lock.lock()
        for fd in fds { shutdown(fd, Int32(SHUT_RDWR)) }
        lock.unlock()
    }

    private func serve(_ target: Endpoint) {
        guard let a = try? Transport.acceptOne(listener, tcp: false, cancelled: { false }),
              let b = try? Transport.connect(target) else { return }
        lock.lock(); fds = [a, b]; lock.unlock()
        let back = Thread { [self] in self.pump(from: b, to: a, fromSource: false) }
        back.start()
        pump(from: a, to: b, fromSource: true)
    }

    /// Copies one direction, applying the fault.
    private func pump(from: Int32, to: Int32, fromSource: Bool) {
        var buffer = [UInt8](repeating: 0, count: 64 * 1024)
        var offset = 0
        var pending: [UInt8] = []     // the target's bytes, parsed for section headers
        while true {
            let n = buffer.withUnsafeMutableBytes { read(from, $0.baseAddress, $0.count) }
            guard n > 0 else { break }
            var chunk = Array(buffer[0..<n])
            switch fault {
            case .flipSourceByte(let at) where fromSource && at >= offset && at < offset + n:
                chunk[at - offset] ^= 0x5a
            case .hangUpAfterSourceBytes(let limit) where fromSource && offset + n >= limit:
                writeRaw(to, Array(chunk.prefix(limit - offset)))
                shutDown()
                return
            case .hangUpWhenTargetSends(let type) where !fromSource:
                pending += chunk
                if containsSection(type, in: &pending) { shutDown(); return }
            case .hangUpWhenSourceSends(let type) where fromSource:
                pending += chunk
                if containsSection(type, in: &pending) { shutDown(); return }
            default:
                break
            }
            if fromSource { lock.lock(); sourceBytes += chunk; lock.unlock() }
            writeRaw(to, chunk)
            offset += n
        }
        shutDown()
    }

    /// Walks the target's stream (16-byte preamble, then framed sections) for a section of `type`.
    private func containsSection(_ type: SectionType, in bytes: inout [UInt8]) -> Bool {
        var at = 16
        while bytes.count >= at + SectionFraming.headerSize {
            let raw = UInt16(bytes[at]) << 8 | UInt16(bytes[at + 1])
            if raw == type.rawValue { return true }
            let len = Int(SectionFraming.bigEndian32(bytes[(at + 4)..<(at + 8)]))
            at += SectionFraming.overhead + len
        }
        return false
    }
}
