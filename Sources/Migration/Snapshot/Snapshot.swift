import Foundation
import Glibc
import Machine

/// How `save` saves.
public struct SaveOptions: Sendable {
    /// Resume the guest after saving instead of stopping it.
    public var leaveRunning = false
    /// Pre-copy into the file while the guest runs, then a short stop-and-copy (`LiveSave.swift`).
    public var live = false
    public init(leaveRunning: Bool = false) { self.leaveRunning = leaveRunning }
}

/// What a save did.
public struct SaveReport: Sendable {
    public var path = ""
    public var memoryBytes: UInt64 = 0
    /// The file's size and what it takes on disk (a sparse file: far less).
    public var apparentBytes: UInt64 = 0
    public var allocatedBytes: UInt64 = 0
    /// Bytes of non-zero guest pages written.
    public var dataBytes: UInt64 = 0
    public var stateBytes = 0
    /// How long the guest was paused (until its pages were in the file's page cache, when it
    /// is left running), and the whole save (until the file is flushed and in place).
    public var pausedMs = 0.0
    public var totalMs = 0.0
    public var leftRunning = false

    public var json: [String: Any] {
        ["path": path, "memory_bytes": memoryBytes, "apparent_bytes": apparentBytes, "allocated_bytes": allocatedBytes,
         "data_bytes": dataBytes, "state_bytes": stateBytes, "paused_ms": pausedMs.rounded3, "total_ms": totalMs.rounded3,
         "left_running": leftRunning]
    }
}

/// Save and restore of a whole guest to a file (`SnapshotHeader` describes the format): the
/// migration's machine description and state, and guest memory laid out so that a restore can
/// map it.
public enum Snapshot {
    /// Pauses `vm` at a safe point, writes it to `path`, then stops it — or, with
    /// `leaveRunning`, resumes it (a guest the user had paused stays paused). On failure the
    /// guest carries on as before and no file is left behind.
    public static func save(_ vm: VM, to path: String, options: SaveOptions) throws -> SaveReport {
        if options.live && !vm.isPaused { return try saveLive(vm, to: path, options: options) }
        let start = Clock.monotonic()
        let wasPaused = vm.isPaused
        guard vm.freeze() else { throw MigrationError.machine("the guest stopped before it could be saved") }
        var report: SaveReport
        let writer: SnapshotWriter
        let header: SnapshotHeader
        do { (writer, header, report) = try write(vm, to: path) } catch {
            vm.thaw(resume: !wasPaused)
            throw error
        }
        // Every page is in the page cache now: a guest left running need not wait for the disk.
        if options.leaveRunning { vm.thaw(resume: !wasPaused) }
        report.pausedMs = (Clock.monotonic() - start) * 1000
        do { try writer.finish(header) } catch {
            // The guest must not be lost with the file: it runs on here.
            if !options.leaveRunning { vm.thaw(resume: !wasPaused) }
            throw error
        }
        if !options.leaveRunning { vm.stop(.saved) }
        report.totalMs = (Clock.monotonic() - start) * 1000
        if !options.leaveRunning { report.pausedMs = report.totalMs }
        report.leftRunning = options.leaveRunning
        (report.apparentBytes, report.allocatedBytes) = writer.sizes()
        return report
    }

    /// Writes the paused, quiesced machine — description and state, then memory — and returns
    /// the writer and the header for `finish`.
    static func write(_ vm: VM, to path: String) throws -> (SnapshotWriter, SnapshotHeader, SaveReport) {
        let state: StateNode
        do { state = try vm.saveMachineState() } catch { throw MigrationError.machine("saving machine state: \(error)") }
        let stateBlob = try FDTCodec.encode(state)
        let description = MachineDescription.of(vm, uuid: UUID().uuidString.lowercased())
        let descriptionBlob = try FDTCodec.encode(description.stateNode)
        let writer = try SnapshotWriter(path: path)
        var header = try writer.begin(description: descriptionBlob, state: stateBlob, memory: vm.memory)
        header.savedAtNanos = Clock.wallNanos()
        var report = SaveReport(path: path, memoryBytes: vm.memory.totalSize, stateBytes: stateBlob.count)
        for (i, region) in vm.memory.regions.enumerated() {
            let scan = try writer.writeRegion(region, at: header.regions[i].fileOffset)
            header.regions[i].dataBytes = scan.dataBytes
            header.regions[i].dataCRC = scan.crc
            report.dataBytes += scan.dataBytes
        }
        return (writer, header, report)
    }
}
