import 'reflect-metadata';
import { Logger, ValidationPipe } from '@nestjs/common';
import { NestFactory } from '@nestjs/core';
import type { NestExpressApplication } from '@nestjs/platform-express';
import type { AddressInfo } from 'node:net';
import { AppModule } from './app.module';
import { ConfigError, loadConfig } from './config';

async function main() {
  let config;
  try {
    config = loadConfig();
  } catch (e) {
    if (e instanceof ConfigError) {
      console.error(e.message);
      process.exit(2);
    }
    throw e;
  }
  // rawBody: the Stripe webhook verifies its signature over the exact bytes received
  const app = await NestFactory.create<NestExpressApplication>(AppModule, { rawBody: true, bufferLogs: false });
  app.useGlobalPipes(new ValidationPipe({ whitelist: true, forbidNonWhitelisted: true, transform: true }));
  app.disable('x-powered-by');
  app.enableShutdownHooks();
  await app.listen(config.port, config.host);
  const addr = app.getHttpServer().address() as AddressInfo;
  Logger.log(`listening on http://${addr.address}:${addr.port}`, 'Main');
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
