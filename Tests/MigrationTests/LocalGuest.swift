import Foundation
import Glibc
import Synchronization
import Testing
@testable import Machine
@testable import Migration

/// The guest images (built by `make -C GuestImages`).
enum GuestImage {
    static let directory: URL = {
        var u = URL(fileURLWithPath: #filePath)
        for _ in 0..<3 { u.deleteLastPathComponent() }
        return u.appendingPathComponent("GuestImages/out")
    }()

    static func path(_ name: String) -> String { directory.appendingPathComponent(name).path }

    static func bytes(_ name: String) throws -> [UInt8] {
        let p = path(name)
        guard let d = FileManager.default.contents(atPath: p) else {
            throw MigrationError.usage("guest image \(p) is missing: run make -C GuestImages")
        }
        return Array(d)
    }
}

/// Serial output collected in memory; waiting for a line is woken by the write that brings it.
final class CaptureSink: SerialSink {
    private let text = Mutex("")
    private let changed = NSCondition()

    func write(_ bytes: UnsafeRawBufferPointer) {
        let s = String(decoding: bytes, as: UTF8.self)
        text.withLock { $0 += s }
        changed.lock(); changed.broadcast(); changed.unlock()
    }

    var output: String { text.withLock { $0 } }

    /// Waits until the output contains `needle` `count` times.
    @discardableResult
    func waitFor(_ needle: String, count: Int = 1, timeout: Double = 60) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        changed.lock()
        defer { changed.unlock() }
        while output.components(separatedBy: needle).count - 1 < count {
            if !changed.wait(until: deadline) { return output.components(separatedBy: needle).count - 1 >= count }
        }
        return true
    }

    func occurrences(_ needle: String) -> Int { output.components(separatedBy: needle).count - 1 }
}

/// A guest booted in this process.
final class LocalGuest: @unchecked Sendable {
    let vm: VM
    let serial = CaptureSink()

    /// Boots `image` and waits until its console shows `ready` (a workload that has touched
    /// its memory prints its first heartbeat only then).
    init(_ image: String, cmdline: String, memory: UInt64 = 64 << 20, cpus: Int = 1, name: String = "local",
         ready: String? = "HEARTBEAT", prepare: (VM) -> Void = { _ in }) throws {
        vm = try VM(config: VMConfig(name: name, memorySize: memory, cpus: cpus, serial: serial))
        prepare(vm)
        let plan = try KernelLoader.plan(BootConfig(kernel: GuestImage.bytes(image), cmdline: cmdline,
                                                    memoryMap: vm.memory.map, cpus: cpus))
        try vm.load(plan)
        vm.start()
        if let ready, !serial.waitFor(ready, timeout: 60) {
            throw MigrationError.machine("the guest never printed \(ready): \(serial.output.suffix(300))")
        }
    }

    /// A guest's heartbeat after now: it is alive and running here.
    func beatsAgain(timeout: Double = 30) -> Bool {
        serial.waitFor("HEARTBEAT", count: serial.occurrences("HEARTBEAT") + 2, timeout: timeout)
    }

    deinit { vm.tearDown(.signal(SIGTERM)) }
}

/// A migration between two machines of this process over a UNIX socket.
final class LocalMigration: @unchecked Sendable {
    let dir: URL
    let endpoint: Endpoint
    let targetSerial = CaptureSink()
    let target: MigrationTarget
    private let done = NSCondition()
    private var received: Result<VM, Error>?

    init(receive configure: (inout ReceiveOptions) -> Void = { _ in }) throws {
        dir = URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent("swiftvmm-mig-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        endpoint = .unix(path: dir.appendingPathComponent("m.sock").path)
        var options = ReceiveOptions(endpoint: endpoint, machine: TargetMachineBuilder(serial: targetSerial))
        configure(&options)
        target = MigrationTarget(options: options)
        try target.listen()
        let t = Thread { [self] in
            let r: Result<VM, Error>
            do { r = .success(try target.run()) } catch { r = .failure(error) }
            done.lock(); received = r; done.broadcast(); done.unlock()
        }
        t.start()
    }

    /// The target's outcome, once it has one.
    func targetResult(timeout: Double = 60) -> Result<VM, Error>? {
        let deadline = Date().addingTimeInterval(timeout)
        done.lock()
        defer { done.unlock() }
        while received == nil { if !done.wait(until: deadline) { break } }
        return received
    }

    /// Sends `guest` here with `options` changed by `configure`.
    func send(_ guest: LocalGuest, _ configure: (inout SendOptions) -> Void = { _ in }) -> (MigrationSource, Result<MigrationReport, Error>) {
        var options = SendOptions(endpoint: endpoint)
        configure(&options)
        let source = MigrationSource(vm: guest.vm, options: options)
        do { return (source, .success(try source.run())) } catch { return (source, .failure(error)) }
    }

    deinit {
        target.cancel("test over")
        if case .success(let vm)? = targetResult(timeout: 30) { vm.tearDown(.signal(SIGTERM)) }
        try? FileManager.default.removeItem(at: dir)
    }
}

extension Result {
    var failure: Failure? { if case .failure(let e) = self { return e }; return nil }
    var success: Success? { if case .success(let v) = self { return v }; return nil }
}
