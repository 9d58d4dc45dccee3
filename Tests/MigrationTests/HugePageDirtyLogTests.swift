import Foundation
import Glibc
import Testing
@testable import Machine
@testable import Migration

@Suite("dirty logging on huge-page-backed guest RAM", .serialized)
struct HugePageDirtyLogTests {
    /// AnonHugePages of the mapping that holds `address`, from /proc/self/smaps (bytes).
    static func anonHugeBytes(at address: UnsafeMutableRawPointer) -> Int {
        guard let data = FileHandle(forReadingAtPath: "/proc/self/smaps")?.readDataToEndOfFile() else { return 0 }
        let text = String(decoding: data, as: UTF8.self)
        let a = UInt(bitPattern: address)
        var inside = false
        for line in text.split(separator: "\n") {
            let f = line.split(separator: " ", omittingEmptySubsequences: true)
            if let range = f.first, range.contains("-"), !range.hasSuffix(":") {
                let ends = range.split(separator: "-").compactMap { UInt($0, radix: 16) }
                inside = ends.count == 2 && ends[0] <= a && a < ends[1]
            } else if inside, f.first == "AnonHugePages:", f.count >= 2, let kb = Int(f[1]) {
                return kb * 1024
            }
        }
        return 0
    }

    /// A LocalGuest whose RAM is advised huge before anything touches it, as a migration target's is.
    static func bootOnHugePages(_ image: String, cmdline: String) throws -> LocalGuest {
        try LocalGuest(image, cmdline: cmdline, memory: 64 << 20, prepare: { $0.memory.adviseHugePages() })
    }

    @Test("with guest RAM on transparent huge pages, KVM's dirty log still names single 4 KiB pages: memtouch's region, not the rest of its 2 MiB pages")
    func dirtyLogIsPerPageOnHugePages() throws {
        let g = try Self.bootOnHugePages("memtouch.elf", cmdline: "size=1M heartbeat-ms=50")
        let line = try #require(g.serial.output.split(separator: "\n").first { $0.hasPrefix("MEMTOUCH start=") })
        let fields = line.split(separator: " ")
        let start = try #require(UInt64(fields[1].dropFirst("start=0x".count), radix: 16))
        let pages = try #require(Int(fields[2].dropFirst("pages=".count)))
        let region = try #require(g.vm.memory.regions.first { $0.start.raw <= start && start < $0.end })
        if HugePages.available {
            #expect(Self.anonHugeBytes(at: region.host) > 0, "guest RAM is not on huge pages although the host offers them")
        }
        try g.vm.startDirtyLog()
        defer { g.vm.stopDirtyLog() }
        var bitmap = [UInt64]()
        #expect(g.beatsAgain())
        _ = try g.vm.collectDirty(region, into: &bitmap)
        for w in bitmap.indices { bitmap[w] = 0 }
        #expect(g.beatsAgain())
        let dirty = try g.vm.collectDirty(region, into: &bitmap)
        func isDirty(_ page: Int) -> Bool { bitmap[page / 64] & (1 << UInt64(page % 64)) != 0 }
        let first = Int((start - region.start.raw) / 4096)
        let huge = HugePages.size / 4096
        let afterRegion = first + pages, hugeEnd = (afterRegion + huge - 1) / huge * huge
        #expect((first..<first + pages).allSatisfy(isDirty), "a page memtouch wrote is missing from the dirty log")
        #expect(!(afterRegion..<min(hugeEnd, region.pageCount)).contains(where: isDirty),
                "pages after memtouch's region, in the same 2 MiB page, are reported dirty")
        #expect(dirty < pages + 64, "\(dirty) dirty pages for a \(pages)-page workload")
    }
}
