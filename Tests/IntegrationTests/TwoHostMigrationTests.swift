import Foundation
import Glibc
import Testing

/// Two "hosts" on one machine: network namespaces joined by a veth pair, the source VMM in
/// one and the target in the other, migrating over TCP across the link.
@Suite("migration between two network namespaces", .serialized)
struct TwoHostMigrationTests {
    /// Creates two namespaces with 192.0.2.1 and 192.0.2.2 (TEST-NET-1, used only inside them).
    final class TwoHosts {
        let a: String, b: String
        init() throws {
            let tag = String(UInt32.random(in: 0...0xffffff), radix: 16)
            a = "svm-a-\(tag)"; b = "svm-b-\(tag)"
            let setup = """
            set -e
            ip netns add \(a); ip netns add \(b)
            ip link add va\(tag) netns \(a) type veth peer name vb\(tag) netns \(b)
            ip -n \(a) addr add 192.0.2.1/24 dev va\(tag); ip -n \(b) addr add 192.0.2.2/24 dev vb\(tag)
            ip -n \(a) link set va\(tag) up; ip -n \(b) link set vb\(tag) up
            ip -n \(a) link set lo up; ip -n \(b) link set lo up
            """
            let r = sh(setup)
            if r.status != 0 {
                sh("ip netns del \(a) 2>/dev/null; ip netns del \(b) 2>/dev/null")
                throw SetupError(message: "namespace setup failed: \(r.output)")
            }
        }
        private var deleted = false
        func delete() {
            guard !deleted else { return }
            deleted = true
            sh("ip netns del \(a) 2>/dev/null; ip netns del \(b) 2>/dev/null")
        }
        deinit { delete() }
    }
    struct SetupError: Error { let message: String }

    @Test("memtouch migrates over TCP from one namespace to another and PASSes there")
    func migratesBetweenNamespaces() throws {
        let hosts = try TwoHosts()
        let rig = try MigrationRig()
        var children: [Child] = []
        defer {
            // Stop the VMMs first, then remove the namespaces they ran in.
            for c in children { c.signal(SIGKILL); _ = c.wait(timeout: 10) }
            hosts.delete()
        }
        let api = rig.path("src.sock")
        let src = try Child("/usr/bin/env", ["ip", "netns", "exec", hosts.a, Paths.swiftvmm, "run",
                                             "--kernel", Paths.guest("memtouch.elf"), "--memory", "256M",
                                             "--cmdline", "size=32M heartbeat-ms=200 passes=30000", "--api-socket", api],
                            name: "source")
        children.append(src)
        try rig.waitForSocket(api, child: src)
        #expect(src.waitFor("HEARTBEAT", timeout: 30))
        let dst = try Child("/usr/bin/env", ["ip", "netns", "exec", hosts.b, Paths.swiftvmm, "recv",
                                             "--listen", "tcp:192.0.2.2:4444"], name: "target")
        children.append(dst)
        #expect(dst.waitForStderr("waiting for a migration", timeout: 30))
        let s = try rig.send(api, to: "tcp:192.0.2.2:4444")
        #expect(s.status == 0, "\(s.stderr)\n\(dst.transcript)")
        #expect(src.wait(timeout: 30) == 0)
        #expect(dst.waitFor("PASS passes=30000", timeout: 120), "\(dst.transcript)")
        #expect(!dst.stdout.contains("FAIL") && !src.stdout.contains("PASS"))
    }
}
