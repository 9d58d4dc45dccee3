import Foundation
import Glibc
import Harness
import Testing

/// Two "hosts" on one machine: network namespaces joined by a veth pair, the source VMM in
/// one and the target in the other, migrating over TCP across the link.
@Suite("migration between two network namespaces", .serialized)
struct TwoHostMigrationTests {
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
