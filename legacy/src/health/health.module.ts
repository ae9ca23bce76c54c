import { Controller, Get, Module, Res } from '@nestjs/common';
import type { Response } from 'express';
import { Db, RedisClient } from '../infra/infra.module';

@Controller('health')
export class HealthController {
  constructor(
    private readonly db: Db,
    private readonly redis: RedisClient,
  ) {}

  /** 200 when Postgres and Redis answer, 503 (with which one failed) otherwise. */
  @Get()
  async health(@Res({ passthrough: true }) res: Response) {
    const check = async (f: () => Promise<unknown>) => {
      try {
        await Promise.race([f(), new Promise((_, rej) => setTimeout(() => rej(new Error('timeout')), 2000))]);
        return 'up';
      } catch {
        return 'down';
      }
    };
    const [database, redis] = await Promise.all([check(() => this.db.query('SELECT 1')), check(() => this.redis.ping())]);
    const ok = database === 'up' && redis === 'up';
    res.status(ok ? 200 : 503);
    return { status: ok ? 'ok' : 'error', checks: { database, redis } };
  }
}

@Module({ controllers: [HealthController] })
export class HealthModule {}
