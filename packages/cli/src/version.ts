/** ferry's version, as `ferry --version` prints it and the helper's HELLO names it. */
export const VERSION = '0.1.0';
