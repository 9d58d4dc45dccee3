import Foundation
import Harness
import Testing

/// A real kernel nobody here wrote: Debian's unmodified cloud kernel, booted as a bzImage
/// through the 64-bit boot protocol. Ring-0 code is emulated on this machine, so this takes
/// minutes; it runs once.
@Suite("Linux bzImage boot", .serialized)
struct LinuxBootTests {
    @Test("Debian's cloud kernel boots and prints its banner and our command line on the serial console")
    func debianCloudKernelBoots() throws {
        let fetch = sh("\(Paths.root.path)/Tools/fetch-debian-kernel")
        try #require(fetch.status == 0, "could not fetch the kernel: \(fetch.output)")
        let kernel = try #require(fetch.output.split(separator: "\n").last.map(String.init))
        let marker = "swiftvmm-boot-\(UInt32.random(in: 1000...999_999))"
        // CMPXCHG16B is hidden because this machine's emulated ring 0 cannot execute it
        // (shared/ENVIRONMENT.md); on a host with hardware virtualization it is not needed.
        let c = try Child.swiftvmm(["run", "--kernel", kernel, "--memory", "512M", "--cpu-feature-deny", "0x1.0.ecx:13",
                                    "--cmdline", "console=ttyS0 earlyprintk=serial,ttyS0,115200 \(marker) panic=-1"])
        let banner = c.waitFor("Linux version", timeout: 600)
        let cmdline = c.waitFor(marker, timeout: 60)
        let e820 = c.waitFor("BIOS-e820", timeout: 60)
        c.signal(SIGTERM)
        _ = c.wait(timeout: 30)
        #expect(banner, "no banner: \(c.transcript.suffix(2000))")
        #expect(cmdline, "command line not echoed: \(c.transcript.suffix(2000))")
        #expect(e820, "e820 map not reported")
    }
}
