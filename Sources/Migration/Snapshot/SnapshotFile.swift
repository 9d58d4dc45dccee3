import Glibc
import Machine

/// A snapshot opened for restore or inspection: its header, description and state read and
/// checked (sizes, offsets, checksums) — nothing in it is used before that. Memory stays in
/// the file until the machine maps or reads it.
public final class SnapshotFile: @unchecked Sendable {
    public let path: String
    /// Open read-only for as long as this object lives.
    public let fd: Int32
    public let header: SnapshotHeader
    public let description: MachineDescription
    public let state: StateNode
    public let apparentBytes: UInt64
    /// Blocks the file takes on disk (sparse: holes take none).
    public let allocatedBytes: UInt64

    /// Opens and checks `path`; a refusal is one line naming the file and what is wrong.
    public init(path: String) throws(MigrationError) {
        self.path = path
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { throw .usage("cannot open the snapshot '\(path)': \(String(cString: strerror(errno)))") }
        do {
            var st = stat()
            guard fstat(fd, &st) == 0 else { throw MigrationError.usage("cannot stat the snapshot '\(path)': \(String(cString: strerror(errno)))") }
            guard (st.st_mode & S_IFMT) == S_IFREG else { throw MigrationError.usage("the snapshot '\(path)' is not a regular file") }
            apparentBytes = UInt64(st.st_size)
            allocatedBytes = UInt64(st.st_blocks) * 512
            let page = try Self.read(fd, path, at: 0, count: min(SnapshotHeader.size, Int(clamping: apparentBytes)))
            do { header = try SnapshotHeader(page: page, actualSize: apparentBytes) } catch {
                throw MigrationError.stream("snapshot '\(path)': \(error)")
            }
            description = try Self.description(fd, path, header)
            state = try Self.state(fd, path, header)
            try Self.checkRegions(header, description, path)
        } catch {
            close(fd)
            throw (error as? MigrationError) ?? .stream("snapshot '\(path)': \(error)")
        }
        self.fd = fd
    }

    deinit { close(fd) }

    /// Reads one blob, checks its CRC.
    private static func blob(_ fd: Int32, _ path: String, _ what: String, offset: UInt64, length: UInt64, crc: UInt32) throws -> [UInt8] {
        let bytes = try read(fd, path, at: offset, count: Int(length))
        guard CRC32C.checksum(bytes) == crc else {
            throw MigrationError.stream("snapshot '\(path)': corrupted: the \(what)'s checksum does not match")
        }
        return bytes
    }

    private static func description(_ fd: Int32, _ path: String, _ h: SnapshotHeader) throws -> MachineDescription {
        let bytes = try blob(fd, path, "machine description", offset: h.descriptionOffset, length: h.descriptionLength, crc: h.descriptionCRC)
        do { return try MachineDescription(node: try FDTCodec.decode(bytes)) } catch {
            throw MigrationError.stream("snapshot '\(path)': the machine description is malformed: \(error)")
        }
    }

    private static func state(_ fd: Int32, _ path: String, _ h: SnapshotHeader) throws -> StateNode {
        let bytes = try blob(fd, path, "machine state", offset: h.stateOffset, length: h.stateLength, crc: h.stateCRC)
        do { return try FDTCodec.decode(bytes) } catch {
            throw MigrationError.stream("snapshot '\(path)': the machine state is malformed: \(error)")
        }
    }

    /// The regions must be exactly the RAM ranges of the described machine.
    private static func checkRegions(_ h: SnapshotHeader, _ d: MachineDescription, _ path: String) throws {
        let map: MemoryMap
        do { map = try MemoryMap(memorySize: d.memorySize) } catch {
            throw MigrationError.stream("snapshot '\(path)': the guest's memory cannot be laid out: \(error)")
        }
        let mine = map.ram.map { ($0.start.raw, $0.size) }
        let theirs = h.regions.map { ($0.guestAddress, $0.size) }
        guard mine.count == theirs.count, !zip(mine, theirs).contains(where: { $0 != $1 }) else {
            throw MigrationError.stream("snapshot '\(path)': corrupted: its memory regions do not match a \(ByteSize.format(d.memorySize)) guest")
        }
    }

    static func read(_ fd: Int32, _ path: String, at offset: UInt64, count: Int) throws -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: count)
        var done = 0
        while done < count {
            let n = bytes.withUnsafeMutableBytes { b -> Int in
                guard let base = b.baseAddress else { return 0 }
                return pread(fd, base + done, count - done, off_t(offset) + off_t(done))
            }
            if n < 0 && errno == EINTR { continue }
            guard n > 0 else {
                throw MigrationError.stream("snapshot '\(path)': \(n == 0 ? "truncated" : String(cString: strerror(errno))) at byte \(Int(offset) + done)")
            }
            done += n
        }
        return bytes
    }

    /// Checks guest memory read from the file (`--prefault`) against each region's data CRC.
    public func verify(_ memory: GuestMemory) throws {
        for (i, region) in memory.regions.enumerated() {
            let scan = RegionScan.scan(region) { _, _ in }
            let h = header.regions[i]
            guard scan.crc == h.dataCRC && scan.dataBytes == h.dataBytes else {
                throw MigrationError.stream("snapshot '\(path)': corrupted: guest memory region \(i) does not match its checksum")
            }
        }
    }
}
