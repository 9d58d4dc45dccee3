import Foundation
import Glibc
import Harness
import Testing

/// The API socket is local and 0600, but what comes through it is untrusted all the same.
@Suite("hostile input on the API socket", .serialized)
struct ControlSocketTests {
    /// A raw client: one connected UNIX socket.
    final class Raw {
        let fd: Int32
        init?(_ path: String, receiveTimeout: Int = 10_000_000) {
            fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
            var addr = sockaddr_un()
            addr.sun_family = sa_family_t(AF_UNIX)
            withUnsafeMutableBytes(of: &addr.sun_path) { p in p.copyBytes(from: Array(path.utf8) + [0]) }
            let r = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
            guard fd >= 0, r == 0 else { close(fd); return nil }
            var tv = timeval(tv_sec: receiveTimeout / 1_000_000, tv_usec: receiveTimeout % 1_000_000)
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        }
        deinit { close(fd) }

        /// Sends `bytes`; false once the server has closed.
        @discardableResult
        func send(_ bytes: [UInt8]) -> Bool {
            var off = 0
            while off < bytes.count {
                let n = bytes.withUnsafeBytes { p in p.baseAddress.map { Glibc.send(fd, $0 + off, bytes.count - off, Int32(MSG_NOSIGNAL)) } ?? -1 }
                if n <= 0 { return false }
                off += n
            }
            return true
        }

        /// One reply line, or nil at end of stream.
        func line() -> String? {
            var out = [UInt8]()
            var b: UInt8 = 0
            while read(fd, &b, 1) == 1 {
                if b == 10 { return String(decoding: out, as: UTF8.self) }
                out.append(b)
            }
            return nil
        }

        func ask(_ text: String) -> String? { send(Array((text + "\n").utf8)) ? line() : nil }
    }

    @Test("malformed JSON, unknown commands, wrong argument types, a 100 MB request and 2000 connections: error replies or closed connections; the VMM and its guest go on")
    func hostileClients() throws {
        let rig = try MigrationRig()
        let (guest, api) = try rig.source("memtouch.elf", cmdline: "size=4M heartbeat-ms=100 passes=0", memory: "32M")
        #expect(guest.waitFor("HEARTBEAT", timeout: 30))
        let c = try #require(Raw(api))
        #expect(c.line()?.contains("\"QMP\"") == true, "the greeting")
        #expect(c.ask(#"{"execute":"query-status"}"#)?.contains("Expecting capabilities negotiation") == true)
        #expect(c.ask(#"{"execute":"qmp_capabilities"}"#)?.contains("\"return\"") == true)
        let bad = ["[1,2,3]", "\"just a string\"", "{\"execute\": 7}", "{}", "{\"a\":}", "]", #"{"execute":"cont","x":1}"#,
                   String(repeating: "x", count: 5000)]
        for text in bad {
            #expect(c.ask(text)?.contains("\"error\"") == true, "\(text.prefix(20))")
        }
        #expect(c.ask(#"{"execute":"no-such-command"}"#)?.contains("CommandNotFound") == true)
        #expect(c.ask(#"{"execute":"migrate","arguments":{"uri":5}}"#)?.contains("expected: string") == true)
        #expect(c.ask(#"{"execute":"migrate","arguments":{"uri":"unix:/x","downtime-ms":1}}"#)?.contains("'downtime-ms' is unexpected") == true)
        #expect(c.ask(#"{"execute":"migrate-set-parameters","arguments":{"downtime-limit":"fast"}}"#)?.contains("downtime-limit") == true)
        #expect(c.ask(#"{"execute":"query-status","arguments":[1]}"#)?.contains("must be an object") == true)
        #expect(c.ask(#"{"execute":"x-swiftvmm-dump-state","arguments":{"path":7}}"#)?.contains("expected: string") == true)
        #expect(c.ask(#"{"execute":"query-status"}"#)?.contains("\"return\"") == true, "the connection survives bad requests")

        // A 100 MB request: the server answers with an error and hangs up long before the end.
        let big = try #require(Raw(api))
        _ = big.line()
        let mb = [UInt8](repeating: 0x41, count: 1 << 20)
        var sent = 0
        while sent < 100, big.send(mb) { sent += 1 }
        #expect(sent < 100, "the server read a 100 MB request to its end")
        #expect(big.line()?.contains("longer than") == true)

        // Thousands of connections: most are turned away at once, the VMM keeps serving.
        var many: [Raw] = []
        for _ in 0..<2000 { if let r = Raw(api, receiveTimeout: 200_000) { many.append(r) } }
        let refused = many.filter { $0.line()?.contains("too many clients") == true }.count
        #expect(refused >= 2000 - 64 - 8, "\(refused) turned away")
        many.removeAll()
        let after = try #require(Raw(api))
        _ = after.line()
        _ = after.ask(#"{"execute":"qmp_capabilities"}"#)
        #expect(after.ask(#"{"execute":"query-status"}"#)?.contains("\"running\"") == true)
        #expect(guest.printsAgain(), "the guest stopped")
        #expect(guest.isRunning)
    }
}
