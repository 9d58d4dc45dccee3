import Foundation
import Glibc
import KVM
import Machine
import Synchronization

/// How `recv` accepts a migration.
public struct ReceiveOptions: Sendable {
    public var endpoint: Endpoint
    public var key: [UInt8]?
    /// When set, the incoming guest must have exactly this much memory / this many vCPUs.
    public var expectMemory: UInt64?
    public var expectCPUs: Int?
    /// Feature bits this host withholds (`LEAF.SUB.REG:BIT`), as if its CPU lacked them.
    public var cpuidDeny: [String] = []
    public var kvmDevice = "/dev/kvm"

    public init(endpoint: Endpoint) { self.endpoint = endpoint }
}

/// The receiving side: accepts one migration, builds the machine paused, loads memory and
/// state, and resumes the guest only after the source's `go`.
public final class MigrationTarget: @unchecked Sendable {
    public typealias Builder = @Sendable (MachineDescription) throws -> VM
    let options: ReceiveOptions
    let builder: Builder
    public let progress = ProgressBox()
    private let cancelReason = Mutex<String?>(nil)
    private let connectionBox = Mutex<Connection?>(nil)
    private var listener: Int32 = -1
    /// Wall-clock nanoseconds when the guest resumed here.
    public private(set) var resumedAtNanos: UInt64 = 0
    /// The incoming machine's description, once pre-checks passed.
    public private(set) var description: MachineDescription?

    public init(options: ReceiveOptions, builder: @escaping Builder) {
        self.options = options
        self.builder = builder
    }

    /// The UNIX socket path this target bound (and so removes), if any.
    private var boundPath: String?

    deinit {
        if listener >= 0 { close(listener) }
        if let p = boundPath { unlink(p) }
    }

    /// Binds the listening socket (fails at once on a busy port or bad path).
    public func listen() throws {
        listener = try Transport.listen(options.endpoint)
        if case .unix(let path) = options.endpoint { boundPath = path }
        // Foundation's JSON machinery costs milliseconds on first use: pay that now, while
        // nothing is moving, rather than in the migration's setup time.
        if let d = try? JSONSerialization.data(withJSONObject: ["warm": [1, 2.5, "x"]]) {
            _ = try? JSONSerialization.jsonObject(with: d)
        }
        progress.update { $0.phase = .waiting; $0.peer = options.endpoint.description }
    }

    public func cancel(_ reason: String = "migration cancelled on the target") {
        cancelReason.withLock { if $0 == nil { $0 = reason } }
        connectionBox.withLock { c in
            c?.sendError(reason)
            c?.abort()
        }
    }

    private func checkCancelled() throws {
        if let r = cancelReason.withLock({ $0 }) { throw MigrationError.cancelled(r) }
    }

    /// Receives the guest and returns its machine, running. On failure nothing ran here.
    public func run() throws -> VM {
        if listener < 0 { try listen() }
        let isTCP: Bool = { if case .tcp = options.endpoint { return true }; return false }()
        var conn: Connection
        var hello: [String: Any]
        var version: UInt32
        // A peer that hangs up or is not a swiftvmm before its hello (a port probe, a health
        // check) is noted and the target keeps waiting for its one migration.
        while true {
            guard let fd = try Transport.acceptOne(listener, tcp: isTCP, cancelled: { cancelReason.withLock { $0 != nil } }) else {
                throw MigrationError.cancelled(cancelReason.withLock { $0 } ?? "cancelled")
            }
            var tv = timeval(tv_sec: 10, tv_usec: 0)
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
            let c = Connection(fd: fd)
            do {
                try c.writePreamble()
                version = try c.readPreamble()
                hello = try c.expect(.hello).json()
            } catch {
                FileHandle.standardError.write(Data("swiftvmm: ignored a connection that is not a migration source (\(error))\n".utf8))
                c.close()
                continue
            }
            tv = timeval(tv_sec: 0, tv_usec: 0)
            setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
            conn = c
            break
        }
        close(listener)
        listener = -1
        if let p = boundPath { unlink(p); boundPath = nil }
        connectionBox.withLock { $0 = conn }
        var vm: VM?
        do {
            let v = try receive(conn, version: version, hello: hello, built: &vm)
            return v
        } catch {
            // Nothing ran here: tear the half-built machine down.
            vm?.stop(.internalError("migration failed"))
            vm?.shutdownVirtioDevices()
            if case MigrationError.peer = error {} else if case MigrationError.cancelled = error {} else {
                conn.sendError("\(error)")
            }
            conn.close()
            let message = "\(error)"
            progress.update { $0.phase = (cancelReason.withLock { $0 != nil }) ? .cancelled : .failed; $0.error = message }
            throw error
        }
    }

    private func receive(_ conn: Connection, version: UInt32, hello: [String: Any], built: inout VM?) throws -> VM {
        progress.update { $0.phase = .setup }
        let announced = (hello["stream_version"] as? Int).map(UInt32.init) ?? version
        guard version == Wire.streamVersion, announced == Wire.streamVersion else {
            let msg = "stream version \(announced) is not supported: this swiftvmm \(SwiftVMMVersion.string) speaks version \(Wire.streamVersion)"
            conn.sendError(msg)
            throw MigrationError.refused(msg)
        }
        let sourceHasKey = hello["has_key"] as? Bool ?? false
        guard let sourceNonce = (hello["nonce"] as? String).flatMap([UInt8].init(hexString:)), sourceNonce.count == 32 else {
            throw MigrationError.stream("malformed hello from the source")
        }
        if let key = options.key {
            guard sourceHasKey else {
                conn.sendError("authentication required: the target has a key; pass the same --key-file to send")
                throw MigrationError.auth("refused an unauthenticated source: this recv requires --key-file on send")
            }
            let nonce = Auth.nonce()
            try conn.send(.helloReply, json: ["stream_version": Int(Wire.streamVersion), "vmm_version": SwiftVMMVersion.string,
                                              "nonce": nonce.hexString, "has_key": true,
                                              "proof": Auth.proof(key: key, role: "recv", first: sourceNonce, second: nonce).hexString])
            let auth: [String: Any]
            do { auth = try conn.expect(.auth).json() } catch MigrationError.peer(let m) {
                throw MigrationError.auth("the source refused authentication: \(m)")
            }
            guard let proof = (auth["proof"] as? String).flatMap([UInt8].init(hexString:)),
                  Auth.equal(proof, Auth.proof(key: key, role: "send", first: nonce, second: sourceNonce)) else {
                conn.sendError("authentication failed: wrong key")
                throw MigrationError.auth("authentication failed: the source's key differs from --key-file")
            }
        } else {
            try conn.send(.helloReply, json: ["stream_version": Int(Wire.streamVersion), "vmm_version": SwiftVMMVersion.string,
                                              "nonce": Auth.nonce().hexString, "has_key": false])
        }
        try checkCancelled()

        // Pre-checks, before any memory moves.
        let configBlob = try conn.expect(.config).payload
        let desc: MachineDescription
        do { desc = try MachineDescription(node: try FDTCodec.decode(configBlob)) } catch let e as MigrationError { throw e } catch {
            throw MigrationError.stream("configuration section: \(error)")
        }
        try preCheck(desc)
        let vm: VM
        do { vm = try builder(desc) } catch let e as MigrationError { throw e } catch {
            throw MigrationError.refused("cannot host the incoming guest: \(error)")
        }
        built = vm
        description = desc
        // Give guest RAM to KVM on another thread while the first pages arrive: a large
        // memory slot takes milliseconds to create. Joined before the state is loaded.
        let slots = SlotRegistration(vm: vm)
        vm.start(paused: true)
        vm.quiesceDevices()
        try conn.send(.accept, json: ["name": vm.config.name])
        progress.update { $0.phase = .receiving; $0.memoryBytes = desc.memorySize }

        // Memory rounds, then state.
        let decoder = PageDecoder(memory: vm.memory)
        var stateLoaded = false
        while true {
            let s = try conn.receive()
            switch s.type {
            case .pages:
                try decoder.apply(s.payload)
                let c = decoder.counters
                progress.update {
                    $0.wireBytes = c.wireBytes
                    if $0.round == 0 { $0.memoryCovered = UInt64(c.dataPages + c.zeroPages) * UInt64(PageBatch.pageSize) }
                }
            case .roundEnd:
                // Memory slots must exist before the stop-and-copy: wait for them here, in
                // pre-copy, so the guest's downtime never does.
                try slots.wait()
                try conn.send(.roundAck, bytes: [])
                if let j = try? s.json(), let r = j["round"] as? Int {
                    progress.update {
                        $0.round = r + 1
                        if r == 0 { $0.memoryCovered = $0.memoryBytes }
                    }
                }
            case .progress:
                if let j = try? s.json() {
                    progress.update {
                        $0.dirtyPagesPerSecond = j["dirty_pages_per_s"] as? Double ?? 0
                        $0.throttlePercent = j["throttle_percent"] as? Int ?? 0
                        $0.rateBytesPerSecond = (j["bandwidth_MBps"] as? Double ?? 0) * 1e6
                    }
                }
            case .state:
                progress.update { $0.phase = .stopAndCopy }
                try slots.wait()
                let node: StateNode
                do { node = try FDTCodec.decode(s.payload) } catch { throw MigrationError.stream("machine state: \(error)") }
                do { try vm.restoreMachineState(node) } catch { throw MigrationError.machine("cannot load the machine state: \(error)") }
                stateLoaded = true
                try checkCancelled()
                try conn.send(.ready, bytes: [])
            case .go:
                guard stateLoaded else { throw MigrationError.stream("go before the machine state") }
                // Committed by the source: from here on the guest runs here.
                vm.resume()
                vm.unquiesceDevices()
                resumedAtNanos = MigrationSource.wallNanos()
                for case let nic as any AnnouncingDevice in vm.devices { nic.announce() }
                try? conn.send(.running, json: ["resumed_at_ns": resumedAtNanos])
                // The source's pause time came with `go`: the downtime as this side saw it.
                let pausedAt = ((try? s.json())?["paused_at_ns"] as? NSNumber)?.uint64Value ?? 0
                let resumed = resumedAtNanos
                progress.update {
                    $0.phase = .completed
                    if pausedAt > 0 && resumed > pausedAt { $0.predictedDowntimeMs = Double(resumed - pausedAt) / 1e6 }
                }
                conn.close()
                connectionBox.withLock { $0 = nil }
                return vm
            case .cancel:
                let why = ((try? s.json())?["desc"] as? String) ?? "cancelled by the source"
                throw MigrationError.cancelled("the source cancelled the migration: \(why)")
            case .error:
                throw MigrationError.peer(((try? s.json())?["desc"] as? String) ?? "unknown error")
            default:
                throw MigrationError.stream("unexpected \(s.type.name) section during transfer")
            }
        }
    }

    /// Refuses, naming what differs, a guest this host cannot run.
    func preCheck(_ desc: MachineDescription) throws {
        func refuse(_ m: String) throws -> Never {
            throw MigrationError.refused(m)
        }
        if let m = options.expectMemory, m != desc.memorySize {
            try refuse("memory size differs: the guest has \(ByteSize.format(desc.memorySize)), recv --memory is \(ByteSize.format(m))")
        }
        if let c = options.expectCPUs, c != desc.cpus {
            try refuse("vCPU count differs: the guest has \(desc.cpus), recv --cpus is \(c)")
        }
        do { _ = try MemoryMap(memorySize: desc.memorySize) } catch { try refuse("guest memory layout cannot be hosted: \(error)") }
        if let avail = Self.availableMemory(), avail < desc.memorySize {
            try refuse("not enough free memory on the target: the guest needs \(ByteSize.format(desc.memorySize)), \(ByteSize.format(avail)) available")
        }
        let hv: Hypervisor
        do { hv = try Hypervisor(path: options.kvmDevice) } catch { try refuse("\(error)") }
        var host: [CPUIDEntry]
        do { host = try hv.supportedCPUID() } catch { try refuse("\(error)") }
        if !options.cpuidDeny.isEmpty {
            do { host = try CPUIDPolicy.deny(options.cpuidDeny, in: host) } catch { throw MigrationError.usage("\(error)") }
        }
        let hostTable = CPUIDPolicy.table(supported: host, vcpuID: 0, vcpuCount: desc.cpus)
        let missing = CPUIDPolicy.missing(guest: CPUIDPolicy.featureWords(desc.cpuid), host: CPUIDPolicy.featureWords(hostTable))
        if !missing.isEmpty {
            try refuse("the target CPU lacks features the guest uses: CPUID \(missing.prefix(8).joined(separator: ", "))\(missing.count > 8 ? " …" : "")")
        }
    }

    /// MemAvailable from /proc/meminfo.
    static func availableMemory() -> UInt64? {
        guard let text = try? String(contentsOfFile: "/proc/meminfo", encoding: .utf8) else { return nil }
        for line in text.split(separator: "\n") where line.hasPrefix("MemAvailable:") {
            let parts = line.split(separator: " ")
            if parts.count >= 2, let kb = UInt64(parts[1]) { return kb * 1024 }
        }
        return nil
    }
}

/// Registers a machine's memory slots on a background thread.
final class SlotRegistration: @unchecked Sendable {
    private let done = NSCondition()
    private var result: Result<Void, Error>?

    init(vm: VM) {
        let t = Thread { [self] in
            let r: Result<Void, Error>
            do { try vm.registerMemorySlots(); r = .success(()) } catch { r = .failure(error) }
            done.lock(); result = r; done.broadcast(); done.unlock()
        }
        t.name = "memslots"
        t.start()
    }

    func wait() throws {
        done.lock()
        while result == nil { done.wait() }
        let r = result
        done.unlock()
        if case .failure(let e)? = r { throw MigrationError.machine("cannot give guest memory to KVM: \(e)") }
    }
}
