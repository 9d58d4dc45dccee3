import Foundation
import Glibc
import Machine

/// `save --live`: pre-copy into the snapshot file while the guest runs — round 0 writes every
/// page it ever touched, each later round rewrites in place the pages it dirtied since — then a
/// short stop-and-copy writes the last dirty pages and the state. Same file, same guarantees
/// (it appears only once complete) as a plain save.
extension Snapshot {
    /// Pre-copy rounds before the guest is paused, at most.
    static let liveRounds = 10
    /// Stop once a round leaves this few dirty pages (16 MiB).
    static let liveStopPages = 4096

    static func saveLive(_ vm: VM, to path: String, options: SaveOptions) throws -> SaveReport {
        let start = Clock.monotonic()
        let description = MachineDescription.of(vm, uuid: UUID().uuidString.lowercased())
        let descriptionBlob = try FDTCodec.encode(description.stateNode)
        // The state can be read only once the vCPUs are paused: room is kept for it.
        let reserve = 64 * 1024 + 64 * 1024 * vm.cpus.count
        let writer = try SnapshotWriter(path: path)
        var header = try writer.begin(description: descriptionBlob, state: [UInt8](repeating: 0, count: reserve), memory: vm.memory)
        do { try vm.startDirtyLog() } catch { throw MigrationError.machine("cannot start dirty logging: \(error)") }
        defer { vm.stopDirtyLog() }
        for (i, region) in vm.memory.regions.enumerated() {
            _ = try writer.writeRegion(region, at: header.regions[i].fileOffset)
        }
        var pending = vm.memory.regions.map { [UInt64](repeating: 0, count: $0.bitmapWords) }
        for _ in 1...liveRounds {
            let dirty = try collect(vm, into: &pending)
            try writeDirty(vm, pending, header, writer)
            if dirty <= liveStopPages { break }
        }
        let pausedAt = Clock.monotonic()
        guard vm.freeze() else { throw MigrationError.machine("the guest stopped before it could be saved") }
        var report: SaveReport
        do { report = try finalRound(vm, &header, writer, &pending, reserve: reserve) } catch {
            vm.thaw()
            throw error
        }
        report.path = path
        if options.leaveRunning { vm.thaw() }
        report.pausedMs = (Clock.monotonic() - pausedAt) * 1000
        do { try writer.finish(header) } catch {
            if !options.leaveRunning { vm.thaw() }
            throw error
        }
        if !options.leaveRunning { vm.stop(.saved) }
        report.totalMs = (Clock.monotonic() - start) * 1000
        if !options.leaveRunning { report.pausedMs = (Clock.monotonic() - pausedAt) * 1000 }
        report.leftRunning = options.leaveRunning
        (report.apparentBytes, report.allocatedBytes) = writer.sizes()
        return report
    }

    /// With the guest paused: the last dirty pages, the state in its reserved room, and each
    /// region's data checksum over what guest memory now holds (which the file now matches).
    static func finalRound(_ vm: VM, _ header: inout SnapshotHeader, _ writer: SnapshotWriter, _ pending: inout [[UInt64]],
                           reserve: Int) throws -> SaveReport {
        _ = try collect(vm, into: &pending)
        try writeDirty(vm, pending, header, writer)
        let state: StateNode
        do { state = try vm.saveMachineState() } catch { throw MigrationError.machine("saving machine state: \(error)") }
        let blob = try FDTCodec.encode(state)
        guard blob.count <= reserve else { throw MigrationError.machine("the machine state (\(blob.count) bytes) outgrew its room in the snapshot") }
        try blob.withUnsafeBytes { try writer.write($0, at: header.stateOffset) }
        header.stateLength = UInt64(blob.count)
        header.stateCRC = CRC32C.checksum(blob)
        header.savedAtNanos = Clock.wallNanos()
        var report = SaveReport(memoryBytes: vm.memory.totalSize, stateBytes: blob.count)
        for (i, region) in vm.memory.regions.enumerated() {
            let scan = RegionScan.scan(region) { _, _ in }
            header.regions[i].dataBytes = scan.dataBytes
            header.regions[i].dataCRC = scan.crc
            report.dataBytes += scan.dataBytes
        }
        return report
    }

    /// The pages written since the last call (KVM's log and the VMM's own), per region.
    static func collect(_ vm: VM, into pending: inout [[UInt64]]) throws -> Int {
        var dirty = 0
        for (i, region) in vm.memory.regions.enumerated() {
            for w in pending[i].indices { pending[i][w] = 0 }
            do { dirty += try vm.collectDirty(region, into: &pending[i]) } catch {
                throw MigrationError.machine("cannot read the dirty log: \(error)")
            }
        }
        return dirty
    }

    /// Rewrites each dirty page at its place in the file (a page that became zero is written
    /// as zeros: the checksums count only non-zero pages).
    static func writeDirty(_ vm: VM, _ pending: [[UInt64]], _ header: SnapshotHeader, _ writer: SnapshotWriter) throws {
        let pageSize = Int(MemoryMap.pageSize)
        for (i, region) in vm.memory.regions.enumerated() {
            for (w, word) in pending[i].enumerated() where word != 0 {
                var bits = word
                while bits != 0 {
                    let page = w * 64 + bits.trailingZeroBitCount
                    bits &= bits - 1
                    guard page < region.pageCount else { continue }
                    try writer.write(UnsafeRawBufferPointer(start: region.host + page * pageSize, count: pageSize),
                                     at: header.regions[i].fileOffset + UInt64(page * pageSize))
                }
            }
        }
    }
}
