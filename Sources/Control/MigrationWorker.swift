import Foundation
import Machine

/// The thread migrations run on. It is started with the controller, before the process is
/// locked down, so that it can confine itself to what a migration needs (sockets, the dirty
/// log, KVM) rather than inherit a control client's narrower filter — a seccomp filter only
/// ever narrows, and a thread inherits its creator's.
final class MigrationWorker: @unchecked Sendable {
    private let condition = NSCondition()
    private var job: (@Sendable () -> Void)?
    private var confined = false

    init() {
        let t = Thread { [self] in self.loop() }
        t.name = "migration"
        t.stackSize = 1 << 20
        t.start()
    }

    /// Runs `body` on the worker when it is free; returns at once. One migration at a time.
    func submit(_ body: @escaping @Sendable () -> Void) {
        condition.lock()
        while job != nil { condition.wait() }
        job = body
        condition.broadcast()
        condition.unlock()
    }

    /// Runs `body` on the worker and waits for its result.
    func run<T>(_ body: @escaping @Sendable () throws -> T) throws -> T {
        let done = NSCondition()
        nonisolated(unsafe) var result: Result<T, Error>?
        submit {
            let r = Result { try body() }
            done.withLock { result = r; done.broadcast() }
        }
        done.lock()
        while result == nil { done.wait() }
        let r = result
        done.unlock()
        guard let r else { throw ControlError("the migration ended without a result") }
        return try r.get()
    }

    private func loop() {
        while true {
            condition.lock()
            while job == nil { condition.wait() }
            let next = job
            condition.unlock()
            if !confined && Confinement.isActive {
                Confinement.confineThread(.migration, name: "migration")
                confined = true
            }
            next?()
            condition.lock()
            job = nil
            condition.broadcast()
            condition.unlock()
        }
    }
}
