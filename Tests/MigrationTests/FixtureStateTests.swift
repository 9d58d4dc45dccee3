import Foundation
import Testing
@testable import Machine
@testable import Migration

/// The machine-state blobs of earlier versions (`Tests/Fixtures/stream-v*/*.state`) still decode
/// and validate against a machine of the same shape.
@Suite("release compatibility: state blobs")
struct FixtureStateTests {
    static let fixtures: URL = {
        var u = URL(fileURLWithPath: #filePath)
        for _ in 0..<2 { u.deleteLastPathComponent() }
        return u.appendingPathComponent("Fixtures")
    }()

    func blobs(_ name: String) -> [URL] {
        let versions = (try? FileManager.default.contentsOfDirectory(at: Self.fixtures, includingPropertiesForKeys: nil)) ?? []
        return versions.map { $0.appendingPathComponent("\(name).state") }.filter { FileManager.default.fileExists(atPath: $0.path) }
    }

    @Test("memtouch's and blktest's saved states prepare cleanly on a fresh machine of their shape")
    func statesPrepare() throws {
        #expect(!blobs("memtouch").isEmpty && !blobs("blktest").isEmpty)
        for blob in blobs("memtouch") {
            let vm = try VM(config: VMConfig(name: "fixture", memorySize: 32 << 20, serial: CaptureSink()))
            defer { vm.tearDown(.signal(15)) }
            _ = try vm.prepareMachineState(FDTCodec.decode(Array(try Data(contentsOf: blob))))
        }
        for blob in blobs("blktest") {
            let image = FileManager.default.temporaryDirectory.appendingPathComponent("fixture-\(UUID().uuidString.prefix(8)).img")
            try Data(count: 1 << 20).write(to: image)
            defer { try? FileManager.default.removeItem(at: image) }
            let vm = try VM(config: VMConfig(name: "fixture", memorySize: 32 << 20, serial: CaptureSink(),
                                             disks: [DiskConfig(path: image.path, volume: "data")]))
            defer { vm.tearDown(.signal(15)) }
            _ = try vm.prepareMachineState(FDTCodec.decode(Array(try Data(contentsOf: blob))))
        }
    }
}
