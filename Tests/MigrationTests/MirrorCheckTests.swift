import Foundation
import Glibc
import Testing
@testable import Machine
@testable import Migration

/// The target's judgement of a source's mirror claims against its own file for the volume.
@Suite("mirror pre-check")
struct MirrorCheckTests {
    static let bytes: UInt64 = 1 << 20

    /// An image carrying `generation` as a mirror (none when nil), in a fresh directory.
    static func image(generation: String?) throws -> (dir: String, path: String) {
        let dir = NSTemporaryDirectory() + "mirror-check-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let path = dir + "/m.img"
        let fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        defer { close(fd) }
        try #require(fd >= 0 && ftruncate(fd, off_t(bytes)) == 0)
        if let generation { try #require(MirrorIdentity.record(generation, fd: fd, path: path)) }
        return (dir, path)
    }

    static func claim(_ generation: String, inSync: Bool = true, checksum: String? = nil) -> MirrorClaim {
        MirrorClaim(volume: "data", generation: generation, inSync: inSync,
                    mapChecksum: checksum ?? MirrorIdentity.emptyMapChecksum(generation: generation, bytes: bytes),
                    dirtyBytes: inSync ? 0 : 65536)
    }

    @Test("an in-sync mirror of the same generation is present; a stale one, one the source reports out of sync, or a map that does not check out is refused in one line; a file that is no mirror is left to the usual volume rules")
    func verdicts() throws {
        let generation = MirrorIdentity.newGeneration()
        let (dir, path) = try Self.image(generation: generation)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let disks = [DiskConfig(path: path, volume: "data")]
        #expect(MirrorCheck.verdict(Self.claim(generation), disks: disks) == .present)
        #expect(MirrorCheck.present([Self.claim(generation)], disks: disks) == ["data"])
        for bad in [Self.claim(MirrorIdentity.newGeneration()), Self.claim(generation, inSync: false),
                    Self.claim(generation, checksum: "0123456789abcdef")] {
            let problems = MirrorCheck.problems([bad], disks: disks)
            #expect(problems.count == 1 && problems[0].contains("volume 'data'") && !problems[0].contains("\n"), "\(problems)")
            #expect(MirrorCheck.present([bad], disks: disks).isEmpty)
        }
        let (plainDir, plain) = try Self.image(generation: nil)
        defer { try? FileManager.default.removeItem(atPath: plainDir) }
        #expect(MirrorCheck.verdict(Self.claim(generation), disks: [DiskConfig(path: plain, volume: "data")]) == .notAMirror)
    }

    @Test("mirror claims survive the description's round trip, and malformed ones are refused")
    func claimsRoundTrip() throws {
        let c = Self.claim(MirrorIdentity.newGeneration())
        #expect(try MirrorClaim.decode(MirrorClaim.node([c])) == [c])
        var bad = MirrorClaim.node([c])
        bad.children[0].set("generation", string: "not-hex")
        #expect(throws: MigrationError.self) { try MirrorClaim.decode(bad) }
        #expect(throws: MigrationError.self) { try MirrorClaim.decode(MirrorClaim.node([c, c])) }
    }
}
