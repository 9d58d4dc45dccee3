import Foundation
import Testing
@testable import Machine

private let MiB: UInt64 = 1 << 20
private let GiB: UInt64 = 1 << 30

/// SplitMix64: deterministic, so a failure reproduces.
private struct SeededRandom: RandomNumberGenerator {
    var state: UInt64
    mutating func next() -> UInt64 {
        state &+= 0x9e37_79b9_7f4a_7c15
        var z = state
        z = (z ^ (z >> 30)) &* 0xbf58_476d_1ce4_e5b9
        z = (z ^ (z >> 27)) &* 0x94d0_49bb_1331_11eb
        return z ^ (z >> 31)
    }
}

@Suite("Boot loader robustness")
struct BootFuzzTests {
    static let interesting: [UInt64] = [0, 1, 0x7f, 0xff, 0x100, 0xfff, 0x1000, 0xffff, 0x1_0000, 0x9fc00, 0x10_0000,
                                        0x7fff_ffff, 0xffff_ffff, 0x1_0000_0000, UInt64(Int64.max), UInt64.max - 1, UInt64.max]

    /// Overwrites 1…8 random spots with random bytes or boundary values, sometimes truncates.
    fileprivate static func mutate(_ input: [UInt8], _ rng: inout SeededRandom, hotZone: Int) -> [UInt8] {
        var b = input
        for _ in 0 ..< Int.random(in: 1 ... 8, using: &rng) where !b.isEmpty {
            let limit = Bool.random(using: &rng) ? min(hotZone, b.count) : b.count
            let at = Int.random(in: 0 ..< limit, using: &rng)
            switch Int.random(in: 0 ..< 3, using: &rng) {
            case 0:
                b[at] = UInt8.random(in: 0 ... 255, using: &rng)
            case 1:
                let v = interesting.randomElement(using: &rng) ?? 0
                let width = [2, 4, 8].randomElement(using: &rng) ?? 4
                for i in 0 ..< width where at + i < b.count { b[at + i] = UInt8(truncatingIfNeeded: v >> (8 * UInt64(i))) }
            default:
                b[at] ^= 1 << UInt8.random(in: 0 ... 7, using: &rng)
            }
        }
        if Int.random(in: 0 ..< 8, using: &rng) == 0 {
            b = Array(b.prefix(Int.random(in: 0 ... b.count, using: &rng)))
        }
        return b
    }

    /// Plans `kernel`; a plan it produces must be sane, an error must have a one-line message.
    static func check(_ kernel: [UInt8], initrd: [UInt8]?, map: MemoryMap, cpus: Int) -> Bool {
        do {
            let plan = try KernelLoader.plan(BootConfig(kernel: kernel, initrd: initrd, cmdline: "console=ttyS0", memoryMap: map, cpus: cpus))
            expectSanePlan(plan, map)
            return true
        } catch {
            #expect(!error.description.isEmpty && !error.description.contains("\n"))
            return false
        }
    }

    @Test("2000 random byte strings never crash the loader")
    func randomBytes() throws {
        var rng = SeededRandom(state: 0x5eed_0001)
        let map = try bootMap(64 * MiB)
        for i in 0 ..< 2000 {
            var bytes = (0 ..< Int.random(in: 0 ... 1024, using: &rng)).map { _ in UInt8.random(in: 0 ... 255, using: &rng) }
            // Give some of them a valid-looking magic so the parsers, not the sniffing, see them.
            if i % 3 == 0, bytes.count >= 4 { bytes.replaceSubrange(0 ..< 4, with: [0x7f, 0x45, 0x4c, 0x46]) }
            if i % 3 == 1, bytes.count >= 0x206 {
                bytes.replaceSubrange(0x202 ..< 0x206, with: Array("HdrS".utf8))
                bytes.putLE(UInt16(0xaa55), at: 0x1fe)
            }
            _ = Self.check(bytes, initrd: nil, map: map, cpus: 1)
        }
    }

    @Test("3000 mutated ELF and bzImage kernels never crash, and whatever loads is sane")
    func mutated() throws {
        var rng = SeededRandom(state: 0x5eed_0002)
        let maps = [try bootMap(16 * MiB), try bootMap(64 * MiB), try bootMap(5 * GiB)]
        let gnu = BootImage.Note(name: Array("GNU\0".utf8), type: 3, desc: [1, 2, 3, 4])
        let seeds: [(bytes: [UInt8], hot: Int)] = [
            (BootImage.elf(), 200),
            (BootImage.elf(is64: false, segments: [.init(paddr: 0x200000, data: BootImage.payload(64), memsz: 0x3000)],
                           notes: [gnu, .entry32(0x200000)]), 160),
            (BootImage.elf(segments: [.init(paddr: 0x100000, data: BootImage.payload(64)),
                                      .init(paddr: 0x400000, data: BootImage.payload(64), memsz: 0x10000)],
                           notes: [.entry64(0x100000)], notesInSectionOnly: true), 300),
            (BootImage.bzImage(), 0x270),
        ]
        var loaded = 0
        for i in 0 ..< 3000 {
            let seed = seeds[i % seeds.count]
            let kernel = Self.mutate(seed.bytes, &rng, hotZone: seed.hot)
            let initrd: [UInt8]? = i % 5 == 0 ? BootImage.payload(Int.random(in: 1 ... 5000, using: &rng)) : nil
            let map = maps[Int.random(in: 0 ..< maps.count, using: &rng)]
            if Self.check(kernel, initrd: initrd, map: map, cpus: Int.random(in: 1 ... 4, using: &rng)) { loaded += 1 }
        }
        // The mutations are small: a good share still loads, so the success path is fuzzed too.
        #expect(loaded > 100)
    }
}

@Suite("Real guest images")
struct BootRealImageTests {
    /// GuestImages/out/*.elf (`make -C GuestImages`, which the test command runs first).
    static var images: [URL] {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let out = root.appendingPathComponent("GuestImages/out")
        let files = (try? FileManager.default.contentsOfDirectory(at: out, includingPropertiesForKeys: nil)) ?? []
        return files.filter { $0.pathExtension == "elf" }.sorted { $0.path < $1.path }
    }

    @Test("every GuestImages/out/*.elf plans as a PVH kernel whose entry lies in the kernel")
    func guestImages() throws {
        let map = try bootMap(256 * MiB)
        let names = Set(Self.images.map(\.lastPathComponent))
        for required in ["hello.elf", "memtouch.elf", "smp.elf", "blktest.elf", "netecho.elf"] {
            #expect(names.contains(required), "GuestImages/out/\(required) is missing: run make -C GuestImages")
        }
        for url in Self.images {
            let kernel = try [UInt8](Data(contentsOf: url))
            let plan = try KernelLoader.plan(BootConfig(kernel: kernel, initrd: [1, 2, 3], cmdline: "x", memoryMap: map, cpus: 2))
            #expect(plan.format == .pvh, "\(url.lastPathComponent)")
            guard case .pvh(let entry, _) = plan.entry else { continue }
            #expect(plan.kernelRange.contains(GuestAddress(UInt64(entry))), "\(url.lastPathComponent)")
            expectSanePlan(plan, map)
        }
    }
}
