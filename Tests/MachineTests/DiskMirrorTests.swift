import Foundation
import Glibc
import Testing
@testable import Machine

/// The mirror's state machine, with its descriptor swapped for a read-only one to make it fail
/// and swapped back to let it recover.
@Suite("disk mirror", .serialized)
struct DiskMirrorTests {
    static let bytes = 1 << 20

    /// A directory with a primary image of `bytes` zero bytes; removed by the caller.
    static func images() throws -> (dir: String, primary: String, mirror: String, fd: Int32) {
        let dir = NSTemporaryDirectory() + "mirror-test-\(UUID().uuidString.prefix(8))"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let primary = dir + "/primary.img"
        let fd = open(primary, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        try #require(fd >= 0 && ftruncate(fd, off_t(bytes)) == 0)
        return (dir, primary, dir + "/mirror.img", fd)
    }

    /// Writes `pattern` at `offset` to the primary, then hands it to the mirror, as virtio-blk does.
    static func guestWrite(_ m: DiskMirror, primary fd: Int32, _ pattern: UInt8, offset: Int, count: Int = 4096) {
        let data = [UInt8](repeating: pattern, count: count)
        data.withUnsafeBytes { b in
            guard let p = b.baseAddress else { return }
            _ = pwrite(fd, p, count, off_t(offset))
            m.write(p, count: count, offset: UInt64(offset))
        }
    }

    static func contents(_ path: String) -> Data { (try? Data(contentsOf: URL(fileURLWithPath: path))) ?? Data() }

    @Test("a mirror that fails falls out of sync with the failed writes' blocks dirty, refuses to resync while it still fails, and after it recovers copies exactly those blocks and is byte-identical, with its generation recorded")
    func failureAndResync() throws {
        let (dir, primary, mirrorPath, fd) = try Self.images()
        defer { close(fd); try? FileManager.default.removeItem(atPath: dir) }
        let m = try DiskMirror(path: mirrorPath, volume: "data", bytes: UInt64(Self.bytes), primaryFD: fd)
        defer { m.shutDown() }
        #expect(m.status.phase == .resyncing)
        m.beginInitialSync()
        #expect(try m.resync() == 0, "two zero images differ nowhere")
        #expect(m.status.phase == .inSync)
        Self.guestWrite(m, primary: fd, 0x11, offset: 8192)
        #expect(Self.contents(mirrorPath) == Self.contents(primary))
        // Flushed: block 0 is durable on the mirror and stays clean when it fails later.
        m.flush()

        // The mirror's descriptor now refuses writes.
        let saved = dup(m.fd)
        let readonly = open(mirrorPath, O_RDONLY | O_CLOEXEC)
        try #require(saved >= 0 && readonly >= 0 && dup2(readonly, m.fd) == m.fd)
        close(readonly)
        Self.guestWrite(m, primary: fd, 0x22, offset: 70_000)
        Self.guestWrite(m, primary: fd, 0x33, offset: 300_000, count: 8192)
        Self.guestWrite(m, primary: fd, 0x44, offset: 300_000 + 4096)
        let lost = m.status
        #expect(lost.phase == .outOfSync)
        #expect(lost.dirtyBytes == 2 * DiskMirror.blockSize, "blocks 1 and 4")
        #expect(lost.error?.contains("Bad file descriptor") == true, "\(lost.error ?? "")")
        #expect(throws: VirtioError.self) { try m.resync() }
        #expect(m.status.phase == .outOfSync)

        // It recovers: only the dirty blocks are copied.
        try #require(dup2(saved, m.fd) == m.fd)
        close(saved)
        #expect(try m.resync() == 2 * DiskMirror.blockSize)
        let back = m.status
        #expect(back.phase == .inSync && back.dirtyBytes == 0)
        #expect(back.generation != lost.generation)
        #expect(Self.contents(mirrorPath) == Self.contents(primary))
        #expect(MirrorIdentity.read(path: mirrorPath) == back.generation)
        #expect(back.mapChecksum == MirrorIdentity.emptyMapChecksum(generation: back.generation, bytes: UInt64(Self.bytes)))
    }

    @Test("the first sync copies only the blocks where the mirror differs from the disk")
    func initialSyncCopiesDifferences() throws {
        let (dir, primary, mirrorPath, fd) = try Self.images()
        defer { close(fd); try? FileManager.default.removeItem(atPath: dir) }
        _ = [UInt8](repeating: 7, count: 100).withUnsafeBytes { pwrite(fd, $0.baseAddress, 100, 200_000) }
        try Data(count: Self.bytes).write(to: URL(fileURLWithPath: mirrorPath))
        let m = try DiskMirror(path: mirrorPath, volume: "data", bytes: UInt64(Self.bytes), primaryFD: fd)
        defer { m.shutDown() }
        m.beginInitialSync()
        #expect(try m.resync() == DiskMirror.blockSize)
        #expect(Self.contents(mirrorPath) == Self.contents(primary))
    }

    @Test("a mirror of another size is refused in one line naming it")
    func mirrorOfAnotherSizeRefused() throws {
        let (dir, _, mirrorPath, fd) = try Self.images()
        defer { close(fd); try? FileManager.default.removeItem(atPath: dir) }
        try Data(count: 4096).write(to: URL(fileURLWithPath: mirrorPath))
        #expect {
            _ = try DiskMirror(path: mirrorPath, volume: "data", bytes: UInt64(Self.bytes), primaryFD: fd)
        } throws: { "\($0)".contains(mirrorPath) && "\($0)".contains("must be the disk's size") && !"\($0)".contains("\n") }
    }

    @Test("the block bitmap marks ranges across block edges, unites, and finds the next set block")
    func bitmap() {
        var a = BlockBitmap(blocks: 130)
        a.mark(offset: 65535, length: 2, blockSize: 65536)
        #expect(a.count == 2 && a.contains(0) && a.contains(1))
        var b = BlockBitmap(blocks: 130)
        b.set(1); b.set(129)
        a.formUnion(b)
        #expect(a.count == 3)
        #expect(a.first(from: 2) == 129 && a.first(from: 130) == nil)
        a.clear(129)
        #expect(a.first(from: 2) == nil)
        a.mark(offset: 129 * 65536, length: 1 << 30, blockSize: 65536)
        #expect(a.count == 3, "a range past the end marks only blocks inside the disk")
    }
}
