import Foundation
import Glibc
import Testing
@testable import Machine

/// Guest memory that starts as a (sparse) file's bytes: mapped privately or read up front.
@Suite("guest memory from a file")
struct MemoryFileTests {
    static let page = 4096
    static let size = 16 << 20

    /// A sparse 16 MiB + 8 KiB file (an 8 KiB header before the RAM image) with data in RAM
    /// pages 5 and 3000; its descriptor and path. The caller closes and unlinks.
    static func sparseImage() throws -> (fd: Int32, path: String) {
        let path = NSTemporaryDirectory() + "memfile-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        let fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw MemoryError.file(offset: 0, errno: errno) }
        #expect(ftruncate(fd, off_t(size + 2 * page)) == 0)
        for (p, byte) in [(5, UInt8(0xa5)), (3000, UInt8(0x3c))] {
            let bytes = [UInt8](repeating: byte, count: page)
            #expect(pwrite(fd, bytes, page, off_t(2 * page + p * page)) == page)
        }
        #expect(fdatasync(fd) == 0)
        return (fd, path)
    }

    @Test("mapped privately: the guest sees the file's pages, writes stay private, the file never changes")
    func mapped() throws {
        let (fd, path) = try Self.sparseImage()
        defer { close(fd); unlink(path) }
        let m = try GuestMemory(map: MemoryMap(memorySize: UInt64(Self.size)),
                                file: MemoryFile(fd: fd, offsets: [UInt64(2 * Self.page)], mode: .mapped))
        #expect(try m.read(GuestAddress(UInt64(5 * Self.page)), count: 2) == [0xa5, 0xa5])
        #expect(try m.read(GuestAddress(UInt64(3000 * Self.page + 100)), count: 1) == [0x3c])
        #expect(try m.read(GuestAddress(UInt64(6 * Self.page)), count: 1) == [0])
        try m.write([1, 2, 3], at: GuestAddress(UInt64(5 * Self.page)))
        #expect(try m.read(GuestAddress(UInt64(5 * Self.page)), count: 4) == [1, 2, 3, 0xa5])
        var back = [UInt8](repeating: 0, count: 1)
        #expect(pread(fd, &back, 1, off_t(7 * Self.page)) == 1 && back == [0xa5])
    }

    @Test("residentPages of a mapped region counts the file's data pages even when nothing faulted them in")
    func residentIncludesFileData() throws {
        let (fd, path) = try Self.sparseImage()
        defer { close(fd); unlink(path) }
        // Drop this file's (clean) pages from the page cache, so mincore alone would miss them.
        _ = posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED)
        let m = try GuestMemory(map: MemoryMap(memorySize: UInt64(Self.size)),
                                file: MemoryFile(fd: fd, offsets: [UInt64(2 * Self.page)], mode: .mapped))
        let r = try #require(m.regions[0].residentPages())
        #expect(r[5] & 1 == 1 && r[3000] & 1 == 1)
        #expect(r[4000] & 1 == 0)
    }

    @Test("prefault reads the data into anonymous memory; holes stay untouched")
    func prefault() throws {
        let (fd, path) = try Self.sparseImage()
        let m = try GuestMemory(map: MemoryMap(memorySize: UInt64(Self.size)),
                                file: MemoryFile(fd: fd, offsets: [UInt64(2 * Self.page)], mode: .prefault))
        close(fd)
        unlink(path)
        #expect(m.regions[0].backing == nil)
        #expect(try m.read(GuestAddress(UInt64(3000 * Self.page)), count: 1) == [0x3c])
        #expect(try m.read(GuestAddress(UInt64(5 * Self.page + 4095)), count: 1) == [0xa5])
        let r = try #require(m.regions[0].residentPages())
        #expect(r[4000] & 1 == 0)
    }

    @Test("FileExtents finds the data between holes")
    func extents() throws {
        let (fd, path) = try Self.sparseImage()
        defer { close(fd); unlink(path) }
        let e = FileExtents.data(fd: fd, start: UInt64(2 * Self.page), length: UInt64(Self.size))
        let pages = e.flatMap { x in stride(from: x.offset, to: x.offset + x.length, by: Self.page).map { Int($0) / Self.page - 2 } }
        #expect(pages.contains(5) && pages.contains(3000))
        #expect(!pages.contains(6) && !pages.contains(4000))
    }
}
