import CLinux
import Glibc

/// Errors of guest-memory access, naming the address range.
public enum MemoryError: Error, Equatable, CustomStringConvertible {
    case outOfBounds(GuestAddress, length: UInt64)
    case allocation(size: UInt64, errno: Int32)
    /// Reading guest RAM's initial contents from its file failed.
    case file(offset: UInt64, errno: Int32)

    public var description: String {
        switch self {
        case .outOfBounds(let a, let l): return "guest range \(a)+\(l) is outside guest RAM"
        case .allocation(let size, let e):
            return "cannot allocate \(size >> 20) MiB of guest memory: \(String(cString: strerror(e)))"
        case .file(let off, let e):
            return "cannot read guest memory from its file at offset \(off): \(String(cString: strerror(e)))"
        }
    }
}

/// One host mapping backing a contiguous range of guest RAM, with the VMM-side dirty bitmap.
public final class MemoryRegion: @unchecked Sendable {
    public let start: GuestAddress
    public let size: UInt64
    public let host: UnsafeMutableRawPointer
    /// KVM memory slot number.
    public let slot: UInt32
    /// One bit per 4 KiB page, set by every write the VMM itself makes (device DMA, boot loader).
    let dirty: UnsafeMutablePointer<UInt64>
    public let bitmapWords: Int

    /// The file this region is mapped from (its own descriptor) and where in it, when its
    /// pages fault in from a snapshot; nil for anonymous memory.
    public let backing: (fd: Int32, offset: UInt64)?
    /// The shared file (a memfd) this region is mapped from with MAP_SHARED, its own descriptor;
    /// nil for private memory. A local hand-over passes it to the next process.
    public let sharedFD: Int32?

    public var pageCount: Int { Int(size / MemoryMap.pageSize) }
    public var end: UInt64 { start.raw + size }

    /// Anonymous memory, or — with `file` — memory that starts as `file`'s bytes at `offset`.
    init(start: GuestAddress, size: UInt64, slot: UInt32, file: (MemoryFile, UInt64)? = nil,
         shared: SharedRAM? = nil) throws(MemoryError) {
        var backing: (fd: Int32, offset: UInt64)?
        var sharedFD: Int32?
        let p: UnsafeMutableRawPointer
        if let shared {
            let (mapping, fd) = try Self.mapShared(shared, size: size)
            p = mapping
            sharedFD = fd
        } else if let (f, offset) = file, f.mode == .mapped {
            let own = fcntl(f.fd, F_DUPFD_CLOEXEC, 0)
            guard own >= 0 else { throw .file(offset: offset, errno: errno) }
            do { p = try Self.mapFile(fd: own, offset: offset, size: size) } catch {
                close(own)
                throw error
            }
            backing = (own, offset)
        } else {
            guard let a = HugePages.mapAnonymous(size: Int(size)) else { throw .allocation(size: size, errno: errno) }
            p = a
            if let (f, offset) = file {
                do { try Self.readFile(fd: f.fd, offset: offset, size: size, into: p) } catch {
                    munmap(p, Int(size))
                    throw error
                }
            }
        }
        _ = madvise(p, Int(size), MADV_DONTDUMP)
        self.backing = backing
        self.sharedFD = sharedFD
        self.start = start
        self.size = size
        self.host = p
        self.slot = slot
        self.bitmapWords = (Int(size / MemoryMap.pageSize) + 63) / 64
        self.dirty = UnsafeMutablePointer<UInt64>.allocate(capacity: bitmapWords)
        dirty.initialize(repeating: 0, count: bitmapWords)
    }

    deinit {
        munmap(host, Int(size))
        if let b = backing { close(b.fd) }
        if let s = sharedFD { close(s) }
        dirty.deallocate()
    }

    func contains(_ a: UInt64, _ length: UInt64) -> Bool {
        a >= start.raw && length <= size && a - start.raw <= size - length
    }

    /// Marks pages covering `[offset, offset+length)` of this region dirty.
    func markDirty(offset: UInt64, length: UInt64) {
        guard length > 0 else { return }
        var page = offset / MemoryMap.pageSize
        let last = (offset + length - 1) / MemoryMap.pageSize
        while page <= last {
            clinux_atomic_or64(dirty + Int(page / 64), 1 << (page % 64))
            page += 1
        }
    }

    /// Takes (reads and clears) 64 pages' worth of the VMM dirty bitmap at `word`.
    public func takeDirtyWord(_ word: Int) -> UInt64 {
        guard word >= 0 && word < bitmapWords else { return 0 }
        if clinux_atomic_load64(dirty + word) == 0 { return 0 }
        return clinux_atomic_xchg64(dirty + word, 0)
    }

    /// Which host pages of this region may hold something other than zeros (bit 0 set): those
    /// ever touched (resident, via mincore) and, for a region mapped from a file, those whose
    /// bytes in the file are data rather than a hole. Other pages read as zero and need not be
    /// scanned.
    public func residentPages() -> [UInt8]? {
        var vec = [UInt8](repeating: 0, count: pageCount)
        let r = vec.withUnsafeMutableBufferPointer { mincore(host, Int(size), $0.baseAddress) }
        guard r == 0 else { return nil }
        if let b = backing {
            let page = MemoryMap.pageSize
            for e in FileExtents.data(fd: b.fd, start: b.offset, length: size) {
                let first = Int((e.offset - b.offset) / page)
                let last = Int((e.offset - b.offset + e.length + page - 1) / page)
                for i in first..<min(last, pageCount) { vec[i] |= 1 }
            }
        }
        return vec
    }
}

/// All guest RAM. Every access is bounds-checked; every write marks the VMM dirty bitmap.
public final class GuestMemory: @unchecked Sendable {
    public let map: MemoryMap
    public let regions: [MemoryRegion]

    /// Guest RAM for `map`: anonymous (zero), or starting as the contents of `file`, or — by
    /// `backend` — shared files another process can map.
    public init(map: MemoryMap, firstSlot: UInt32 = 0, file: MemoryFile? = nil,
                backend: MemoryBackend = .anonymous) throws(MemoryError) {
        self.map = map
        var regions: [MemoryRegion] = []
        if let file, file.offsets.count != map.ram.count { throw .file(offset: 0, errno: EINVAL) }
        if case .adopted(let fds) = backend, fds.count != map.ram.count { throw .file(offset: 0, errno: EINVAL) }
        for (i, r) in map.ram.enumerated() {
            let f = file.map { ($0, $0.offsets[i]) }
            var shared: SharedRAM?
            switch backend {
            case .anonymous: break
            case .memfd: shared = .create(name: "swiftvmm-ram\(i)")
            case .adopted(let fds): shared = .adopt(fds[i])
            }
            regions.append(try MemoryRegion(start: r.start, size: r.size, slot: firstSlot + UInt32(i), file: f, shared: shared))
        }
        self.regions = regions
    }

    public var totalSize: UInt64 { map.memorySize }

    /// The region and offset holding `[address, address+length)`, or nil when it is not all RAM.
    public func locate(_ address: GuestAddress, length: UInt64) -> (MemoryRegion, UInt64)? {
        for r in regions where r.contains(address.raw, length) {
            return (r, address.raw - r.start.raw)
        }
        return nil
    }

    /// A host pointer to `[address, address+length)`, or nil when the range is not all RAM.
    /// Writers through this pointer must call `markDirty`.
    public func pointer(_ address: GuestAddress, length: UInt64) -> UnsafeMutableRawPointer? {
        guard let (r, off) = locate(address, length: length) else { return nil }
        return r.host + Int(off)
    }

    public func markDirty(_ address: GuestAddress, length: UInt64) {
        guard let (r, off) = locate(address, length: length) else { return }
        r.markDirty(offset: off, length: length)
    }

    public func read(_ address: GuestAddress, count: Int) throws(MemoryError) -> [UInt8] {
        guard count >= 0, let p = pointer(address, length: UInt64(count)) else {
            throw .outOfBounds(address, length: UInt64(max(count, 0)))
        }
        return Array(UnsafeRawBufferPointer(start: p, count: count))
    }

    public func read(_ address: GuestAddress, into buffer: UnsafeMutableRawBufferPointer) throws(MemoryError) {
        guard let p = pointer(address, length: UInt64(buffer.count)) else {
            throw .outOfBounds(address, length: UInt64(buffer.count))
        }
        if let b = buffer.baseAddress { b.copyMemory(from: p, byteCount: buffer.count) }
    }

    public func write(_ bytes: some Collection<UInt8>, at address: GuestAddress) throws(MemoryError) {
        let n = UInt64(bytes.count)
        guard let (r, off) = locate(address, length: n) else { throw .outOfBounds(address, length: n) }
        let dst = UnsafeMutableRawBufferPointer(start: r.host + Int(off), count: bytes.count)
        dst.copyBytes(from: bytes)
        r.markDirty(offset: off, length: n)
    }

    public func write(_ buffer: UnsafeRawBufferPointer, at address: GuestAddress) throws(MemoryError) {
        let n = UInt64(buffer.count)
        guard let (r, off) = locate(address, length: n) else { throw .outOfBounds(address, length: n) }
        if let b = buffer.baseAddress { (r.host + Int(off)).copyMemory(from: b, byteCount: buffer.count) }
        r.markDirty(offset: off, length: n)
    }

    public func load<T: FixedWidthInteger>(_ type: T.Type, at address: GuestAddress) throws(MemoryError) -> T {
        guard let p = pointer(address, length: UInt64(MemoryLayout<T>.size)) else {
            throw .outOfBounds(address, length: UInt64(MemoryLayout<T>.size))
        }
        return T(littleEndian: p.loadUnaligned(as: T.self))
    }

    public func store<T: FixedWidthInteger>(_ value: T, at address: GuestAddress) throws(MemoryError) {
        let n = UInt64(MemoryLayout<T>.size)
        guard let (r, off) = locate(address, length: n) else { throw .outOfBounds(address, length: n) }
        (r.host + Int(off)).storeBytes(of: value.littleEndian, as: T.self)
        r.markDirty(offset: off, length: n)
    }
}
