import Machine

/// The kernel loaders: an image (PVH ELF, bzImage, or anything else) planned into a machine of
/// 256 MiB or of 3 GiB + 256 MiB (RAM on both sides of the MMIO hole), with and without an
/// initrd — chosen by the input's length, so the image bytes are the kernel as they are. A plan
/// must keep its promise: every write in RAM, no two writes overlapping, the initrd in RAM.
enum BootTarget {
    static let maps: [MemoryMap] = [256 << 20, MemoryMap.mmioHoleStart + (256 << 20)].compactMap { try? MemoryMap(memorySize: $0) }

    static func run(_ data: [UInt8]) {
        let map = maps[data.count % maps.count]
        let initrd: [UInt8]? = data.count & 2 != 0 ? [UInt8](repeating: 0x42, count: 4096 + data.count % 4096) : nil
        let config = BootConfig(kernel: data, initrd: initrd, cmdline: "console=ttyS0 reboot=k", memoryMap: map,
                                cpus: 1 + data.count % 4)
        guard let plan = try? KernelLoader.plan(config) else { return }
        check(plan, map)
    }

    static func check(_ plan: BootPlan, _ map: MemoryMap) {
        let ranges = plan.writes.map { ($0.address.raw, UInt64($0.bytes.count)) }.sorted { $0.0 < $1.0 }
        for (start, length) in ranges {
            require(map.isRAM(GuestAddress(start), length: length),
                    "a boot write of \(length) bytes at 0x\(String(start, radix: 16)) is outside RAM")
        }
        for (a, b) in zip(ranges, ranges.dropFirst()) {
            require(a.0 + a.1 <= b.0, "boot writes at 0x\(String(a.0, radix: 16)) (+\(a.1)) and 0x\(String(b.0, radix: 16)) overlap")
        }
        if let r = plan.initrdRange {
            require(map.isRAM(r.lowerBound, length: r.upperBound.raw - r.lowerBound.raw), "the initrd is outside RAM")
        }
    }
}
