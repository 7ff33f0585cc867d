// `node --import <this file> --test`: resolves the contract's
// `wicket:plugin/<interface>@<version>` imports to the fakes in `fakes/`,
// so a policy and its SDK run in plain Node.js.
import { register } from "node:module";

register("./hooks.js", import.meta.url);
