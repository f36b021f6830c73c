// The memory all NBD connections hold together (docs/limits.md "Memory"). Each connection may
// hold its floor whatever others do; beyond it, it draws on one shared budget. A connection asks
// before it takes more (a request to serve, a WRITE payload to read); when the budget cannot give
// it, the connection stops reading and waits. Waiters are let go smallest first as memory frees,
// so the connections that hold most are the ones that stay stopped.

/** A connection as the budget sees it. */
export interface BudgetHolder {
  /** Bytes it holds now: received and not yet served, in flight, replies queued. */
  heldBytes(): number;
  /** What it waited for fits now: it should ask again (and will be given it). */
  budgetFreed(): void;
}

export class MemoryBudget {
  readonly budgetBytes: number;
  readonly floorBytes: number;
  /** What each holder held when last counted. */
  private readonly charges = new Map<BudgetHolder, number>();
  /** Holders stopped for want of memory, with the bytes each asked for. */
  private readonly waiting = new Map<BudgetHolder, number>();
  /** Holders gone: late counts (a request finishing after its connection closed) are ignored. */
  private readonly removed = new WeakSet<BudgetHolder>();
  private heldTotalBytes = 0;
  private sharedTotalBytes = 0;
  private waking = false;
  private wakeAgain = false;

  constructor(budgetBytes: number, floorBytes: number) {
    if (!(budgetBytes > 0 && floorBytes >= 0)) throw new TypeError('a memory budget needs a positive size and a floor of zero or more');
    this.budgetBytes = budgetBytes;
    this.floorBytes = floorBytes;
  }

  /** Bytes all holders hold, as last counted. */
  get heldBytes(): number {
    return this.heldTotalBytes;
  }

  /** Of those, the bytes beyond the holders' floors: what the budget bounds. */
  get sharedBytes(): number {
    return this.sharedTotalBytes;
  }

  /** Holders stopped until memory frees. */
  get waitingCount(): number {
    return this.waiting.size;
  }

  isWaiting(holder: BudgetHolder): boolean {
    return this.waiting.has(holder);
  }

  /**
   * Whether `holder` may take `costBytes` more now. If not, it is noted as waiting and told by
   * budgetFreed() when that much fits. The caller takes the bytes, then calls count().
   */
  admit(holder: BudgetHolder, costBytes: number): boolean {
    if (this.removed.has(holder)) return false;
    this.count(holder);
    if (this.fits(holder, costBytes)) {
      this.waiting.delete(holder);
      return true;
    }
    this.waiting.set(holder, costBytes);
    return false;
  }

  /** Count what `holder` holds now; when that went down, waiters that fit now are let go. */
  count(holder: BudgetHolder): void {
    if (this.removed.has(holder)) return;
    const before = this.charges.get(holder) ?? 0;
    const after = holder.heldBytes();
    if (after === before && this.charges.has(holder)) return;
    this.charges.set(holder, after);
    this.heldTotalBytes += after - before;
    this.sharedTotalBytes += this.sharedPart(after) - this.sharedPart(before);
    if (after < before) this.wake();
  }

  /** The holder is gone: what it held is free. */
  remove(holder: BudgetHolder): void {
    this.removed.add(holder);
    const before = this.charges.get(holder);
    this.waiting.delete(holder);
    if (before === undefined) return;
    this.charges.delete(holder);
    this.heldTotalBytes -= before;
    this.sharedTotalBytes -= this.sharedPart(before);
    this.wake();
  }

  /** Count every holder again (replies drain without telling anyone) and let waiters go. */
  recount(): void {
    for (const holder of [...this.charges.keys()]) this.count(holder);
    this.wake();
  }

  private sharedPart(bytes: number): number {
    return Math.max(0, bytes - this.floorBytes);
  }

  private fits(holder: BudgetHolder, costBytes: number): boolean {
    const charged = this.charges.get(holder) ?? 0;
    const after = charged + costBytes;
    if (after <= this.floorBytes) return true;
    return this.sharedTotalBytes - this.sharedPart(charged) + this.sharedPart(after) <= this.budgetBytes;
  }

  /** Let waiters go, those holding least first, while what each asked for fits. */
  private wake(): void {
    if (this.waiting.size === 0) return;
    if (this.waking) {
      this.wakeAgain = true;
      return;
    }
    this.waking = true;
    try {
      do {
        this.wakeAgain = false;
        const byHolding = [...this.waiting.keys()].sort((a, b) => (this.charges.get(a) ?? 0) - (this.charges.get(b) ?? 0));
        for (const holder of byHolding) {
          const costBytes = this.waiting.get(holder);
          if (costBytes === undefined || !this.fits(holder, costBytes)) continue;
          this.waiting.delete(holder);
          holder.budgetFreed();
        }
      } while (this.wakeAgain && this.waiting.size > 0);
    } finally {
      this.waking = false;
    }
  }
}
