import ArgumentParser
import Foundation
import Migration

struct Inspect: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Summarise a snapshot, or decode a machine-state blob (FDT) or a captured migration stream.")

    @Argument(help: "A snapshot (from `save`), a machine-state FDT (from the monitor's x-swiftvmm-dump-state) or the bytes of a migration stream.")
    var file: String

    func run() throws {
        if SnapshotFile.looksLikeSnapshot(file) {
            do { print(try SnapshotFile(path: file).summary, terminator: "") } catch { throw fail("\(error)") }
            return
        }
        guard let data = FileManager.default.contents(atPath: file) else { throw fail("cannot read '\(file)'") }
        let bytes = Array(data)
        switch StreamInspector.kind(of: bytes) {
        case .machineState:
            do { print(StreamInspector.render(try FDTCodec.decode(bytes)), terminator: "") } catch { throw fail("\(file): \(error)") }
        case .stream:
            print(StreamInspector.stream(bytes), terminator: "")
        case .unknown:
            throw fail("'\(file)' is neither a machine-state FDT nor a swiftvmm migration stream")
        }
    }
}
