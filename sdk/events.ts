/**
 * An EventTarget whose listeners are typed by event name, so `store.addEventListener("adapter:evicted", (e) =>
 * e.detail.sha256)` type-checks without casts. Services extend it with a map of their events.
 *
 * @example
 * interface StoreEvents { "adapter:evicted": CustomEvent<{ sha256: string }> }
 * class Store extends TypedEventTarget<StoreEvents> {}
 * new Store().addEventListener("adapter:evicted", (e) => console.log(e.detail.sha256))
 */
export class TypedEventTarget<Events extends { [K in keyof Events]: Event }> extends EventTarget {
  override addEventListener<K extends keyof Events & string>(
    type: K,
    listener: ((event: Events[K]) => void) | null,
    options?: boolean | AddEventListenerOptions,
  ): void;
  override addEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | AddEventListenerOptions,
  ): void;
  override addEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | ((event: never) => void) | null,
    options?: boolean | AddEventListenerOptions,
  ): void {
    super.addEventListener(type, listener as EventListenerOrEventListenerObject | null, options);
  }

  override removeEventListener<K extends keyof Events & string>(
    type: K,
    listener: ((event: Events[K]) => void) | null,
    options?: boolean | EventListenerOptions,
  ): void;
  override removeEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | null,
    options?: boolean | EventListenerOptions,
  ): void;
  override removeEventListener(
    type: string,
    listener: EventListenerOrEventListenerObject | ((event: never) => void) | null,
    options?: boolean | EventListenerOptions,
  ): void {
    super.removeEventListener(type, listener as EventListenerOrEventListenerObject | null, options);
  }
}
