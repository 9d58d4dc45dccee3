import Foundation
import Glibc
import Machine

/// QMP's asynchronous events: whoever notices a change (a vCPU thread, the migration, a control
/// client) queues it here without blocking, and one thread of its own writes each event, in
/// order, to every client that has negotiated capabilities.
public final class EventBroadcaster: @unchecked Sendable {
    /// Writes one line to a client; false when the client is gone (it is then dropped).
    typealias Sink = @Sendable ([UInt8]) -> Bool

    private let condition = NSCondition()
    private var queue: [[String: Any]] = []
    private var sinks: [Int: Sink] = [:]
    private var delivering = false
    private var confined = false

    /// Starts the delivery thread (before the process is locked down; it confines itself to what
    /// a control client may do).
    public init() {
        let t = Thread { [self] in self.loop() }
        t.name = "qmp-events"
        t.stackSize = 512 << 10
        t.start()
    }

    /// Queues event `name` with `data`, stamped now.
    public func emit(_ name: String, _ data: [String: Any]? = nil) {
        let e = QMP.event(name, data: data, at: QMP.now())
        condition.withLock {
            queue.append(e)
            condition.broadcast()
        }
    }

    func subscribe(_ id: Int, _ sink: @escaping Sink) { condition.withLock { sinks[id] = sink } }

    func unsubscribe(_ id: Int) { _ = condition.withLock { sinks.removeValue(forKey: id) } }

    /// Waits (at most `timeout` s) until every queued event has been written: a process about
    /// to exit lets its last events (SHUTDOWN) reach the clients.
    public func flush(timeout: Double) {
        let deadline = Date().addingTimeInterval(timeout)
        condition.lock()
        while (!queue.isEmpty || delivering) && Date() < deadline { _ = condition.wait(until: deadline) }
        condition.unlock()
    }

    private func loop() {
        while true {
            condition.lock()
            while queue.isEmpty { condition.wait() }
            let batch = queue
            queue.removeAll()
            let targets = sinks
            delivering = true
            condition.unlock()
            if !confined && Confinement.isActive {
                Confinement.confineThread(.control, name: "qmp-events")
                confined = true
            }
            var gone: [Int] = []
            // With no client, nothing is written (nor serialized: the first serialization
            // loads Foundation's collation tables).
            for e in batch where !targets.isEmpty {
                guard var data = try? JSONSerialization.data(withJSONObject: e, options: [.sortedKeys]) else { continue }
                data.append(10)
                let line = [UInt8](data)
                for (id, sink) in targets where !gone.contains(id) && !sink(line) { gone.append(id) }
            }
            condition.lock()
            for id in gone { sinks.removeValue(forKey: id) }
            delivering = false
            condition.broadcast()
            condition.unlock()
        }
    }
}
